"""Builders of tiny files in the exact release layouts of rMD17, sGDML (MD22/MD17) and QM9 (docs/formats.md).

The three qm9pack rows are verbatim from qm9pack 1.0.3's `qm9_part1.csv` (QM9, CC BY 4.0).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

RMD17_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])  # ethanol


def write_rmd17(path: Path, n_frames: int = 1200, *, compressed: bool = False, seed: int = 0, **override) -> dict:
    """`rmd17_<molecule>.npz` with nuclear_charges, coords (A), energies (kcal/mol), forces (kcal/mol/A)
    and the old_* keys; returns the arrays written. `override` replaces or (value None) drops keys."""
    rng = np.random.default_rng(seed)
    n = RMD17_Z.shape[0]
    arrays = {
        "nuclear_charges": RMD17_Z,
        "coords": rng.normal(size=(n_frames, n, 3)),
        "energies": -97000.0 + rng.normal(size=n_frames),
        "forces": 10 * rng.normal(size=(n_frames, n, 3)),
        "old_indices": np.arange(n_frames),
        # an object array: reading it would need allow_pickle, so a reader that touches old_* fails
        "old_energies": np.array([None] * n_frames, dtype=object),
        "old_forces": rng.normal(size=(n_frames, n, 3)),
    }
    for key, value in override.items():
        if value is None:
            arrays.pop(key, None)
        else:
            arrays[key] = value
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays


def write_sgdml(
    path: Path,
    n_frames: int = 100,
    *,
    name: str | np.ndarray | None = "AT-AT",
    e_flat: bool = False,
    e_unit: str | None = "kcal/mol",
    r_unit: str | None = "Ang",
    seed: int = 0,
    **override,
) -> dict:
    """sGDML npz (R, z, E (F, 1), F, name, theory, type, e_unit, r_unit, md5 bytes, stats, perms)."""
    rng = np.random.default_rng(seed)
    z = np.array([7, 6, 1, 1])
    energies = -620000.0 + rng.normal(size=(n_frames, 1))
    arrays = {
        "R": rng.normal(size=(n_frames, 4, 3)),
        "z": z,
        "E": energies.reshape(-1) if e_flat else energies,
        "F": rng.normal(size=(n_frames, 4, 3)),
        "type": np.array(b"d"),
        "theory": np.array("PBE+MBD, 500K"),
        "md5": np.array(b"566c78362b66a81c9cb56f9275dbfa0f"),
        "code_version": np.array("0.4.18.dev1"),
        "E_min": np.array(energies.min()),
        "E_mean": np.array(energies.mean()),
        "perms": np.tile(np.arange(4), (2, 1)),
    }
    if name is not None:
        arrays["name"] = name if isinstance(name, np.ndarray) else np.array(name)
    if e_unit is not None:
        arrays["e_unit"] = np.array(e_unit)
    if r_unit is not None:
        arrays["r_unit"] = np.array(r_unit)
    for key, value in override.items():
        if value is None:
            arrays.pop(key, None)
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return arrays


# -- QM9 ------------------------------------------------------------------------------------------
# A made-up molecule in the raw QM9 xyz layout, with Mathematica '*^' exponents (as in the release).
QM9_XYZ_STARS = (
    "3\n"
    "gdb 7\t1.0*^2\t2.5\t3.5\t1.5*^-1\t6.31\t-0.2928\t0.0687\t0.3615\t19.0002\t0.021375\t"
    "-76.404702\t-76.401867\t-76.400922\t-76.422349\t6.002\t\n"
    "O\t-0.0343604951\t 0.9775395708\t 0.0076015923\t-0.589706\n"
    "H\t 0.0647664923\t 0.0205721989\t 1.5346341*^-3\t 0.294853\n"
    "H\t 0.8717903737\t 1.3007924048\t 0.0006931336\t 2.94853*^-1\n"
    "1671.4222\t3803.6305\t3907.698\n"
    "O\tO\t\n"
    "InChI=1S/H2O/h1H2\tInChI=1S/H2O/h1H2\n"
)


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    """A tarball of `files` (name -> bytes); mode 'w', 'w:gz', 'w:bz2'."""
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


QM9PACK_HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Harmonic_Fre"
    "q_cmi,RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO"
    "_gap_au,R2_bohr2,ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,Gibbs"
    "FreeEnergy_298K_au,Heatcapacity_Cv_cal_mol_K"
)
QM9PACK_ROW_1 = (
    '"dsgdb9nsd_000001.xyz",1,"C","InChI=1S/CH4/h1H4",5,"[4,1,0,0,0]","[\'C\',\'H\',\'H\',\'H\',\'H\']","[['
    "-0.0126981359,1.0858041578,0.0080009958],[0.002150416,-0.0060313176,0.0019761204],[1.0117308"
    "433,1.4637511618,0.0002765748],[-0.540815069,1.4475266138,-0.8766437152],[-0.5238136345,1.43"
    '79326443,0.9063972942]]","[-0.535689,0.133921,0.133922,0.133923,0.133923]","[1341.307,1341.3'
    '284,1341.365,1562.6731,1562.7453,3038.3205,3151.6034,3151.6788,3151.7078]",157.7118,157.7099'
    "7,157.70699,0.,13.21,-0.3877,0.1171,0.5048,35.3641,0.044749,-40.47893,-40.476062,-40.475117,"
    "-40.498597,6.469"
)
QM9PACK_ROW_2 = (
    '"dsgdb9nsd_000002.xyz",2,"N","InChI=1S/H3N/h1H3",4,"[3,0,1,0,0]","[\'N\',\'H\',\'H\',\'H\']","[[-0.0'
    "404260543,1.0241077531,0.0625637998],[0.0172574639,0.0125452063,-0.0273771593],[0.9157893661"
    ',1.3587451948,-0.0287577581],[-0.5202777357,1.3435321258,-0.7755426124]]","[-0.707143,0.2357'
    '12,0.235712,0.23572]","[1103.8733,1684.1158,1684.3072,3458.7145,3575.2414,3575.3343]",293.60'
    "975,293.54111,191.39397,1.6256,9.46,-0.257,0.0829,0.3399,26.1563,0.034358,-56.525887,-56.523"
    "026,-56.522082,-56.544961,6.316"
)
QM9PACK_ROW_184 = (
    '"dsgdb9nsd_000184.xyz",184,"FC(F)(F)F","InChI=1S/CF4/c2-1(3,4)5",5,"[0,1,0,0,4]","[\'F\',\'C\',\''
    "F','F','F']\",\"[[0.0010921821,0.0735451051,0.0024996288],[-0.0168887554,1.3947684349,0.009692"
    "655],[1.2227713731,1.8522134169,0.0003138912],[-0.6559701536,1.8325027456,-1.0609125843],[-0"
    '.6354026161,1.8208575876,1.0969063093]]","[-0.063897,0.255845,-0.063938,-0.064034,-0.063976]'
    '","[429.729,430.4483,625.9373,626.1957,626.5807,914.9479,1290.7011,1290.8863,1291.31]",5.713'
    "26,5.71279,5.71267,0.0003,15.93,-0.4286,0.1935,0.6221,279.3208,0.017147,-437.484875,-437.480"
    "956,-437.480011,-437.512059,12.639"
)
QM9PACK_ROWS = {1: QM9PACK_ROW_1, 2: QM9PACK_ROW_2, 184: QM9PACK_ROW_184}


def write_qm9pack_csv(path: Path, rows: list[str], *, header: str = QM9PACK_HEADER) -> Path:
    """A qm9pack CSV: header line, then rows, each ending in '\\n' (as in the wheel)."""
    path.write_text("\n".join([header, *rows]) + "\n")
    return path
