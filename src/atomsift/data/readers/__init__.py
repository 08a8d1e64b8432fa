"""One module per on-disk format; each defines a `Dataset` subclass registered in `registry.FORMATS`."""
