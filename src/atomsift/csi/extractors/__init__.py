"""The built-in CSI feature extractors, one module each (imported lazily by `atomsift.csi.extract`).

    sevenn.py   SevenNet-0 (11 Jul 2024): 128 invariant channels after the last equivariant gate (default)
    chgnet.py   CHGNet 0.3.0: 64 atom features after the last atom convolution and the readout norm
    soap.py     dscribe SOAP: "soap" (element-agnostic power spectrum, 105-d) and "soap-full" (species pairs)

Each module imports its model library only when the extractor is built, after setting the offline guards.
"""
