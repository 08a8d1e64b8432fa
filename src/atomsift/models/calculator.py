"""ASE calculator around an atomsift model, so a trained model runs MD and relaxations in ASE.

atoms.calc = load_checkpoint("model.pt").as_calculator()
BFGS(atoms).run(fmax=0.05)
"""

from __future__ import annotations

from typing import Any

from ase.calculators.calculator import Calculator, all_changes

from atomsift.errors import ConfigError


class AtomsiftCalculator(Calculator):
    """Energy (eV) and forces (eV/A) from an AtomsModel head with kind "energy".

    Args:
        model: an atomsift.models.AtomsModel.
        head: which of its heads to use (None: the default head).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model, head: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.head = model.head_name(head)
        spec = model.head_specs[self.head]
        if spec.kind != "energy":
            energy_heads = [n for n, s in model.head_specs.items() if s.kind == "energy"]
            raise ConfigError(
                f"head '{self.head}' predicts a property, not an energy, so it cannot drive an ASE calculator",
                fix=f"pick an energy head: {', '.join(energy_heads)}"
                if energy_heads
                else "this model has no energy head: finetune one with an energy target (docs/training.md)",
            )
        if spec.forces is None:
            self.implemented_properties = ["energy", "free_energy"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        (result,) = self.model.predict([self.atoms], head=self.head, batch_size=1)
        self.results = {"energy": result["energy"], "free_energy": result["energy"]}
        if "forces" in result:
            self.results["forces"] = result["forces"]
