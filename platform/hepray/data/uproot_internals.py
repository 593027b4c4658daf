"""uproot's private attributes, in this one module.

uproot 5.7 inflates ZLIB baskets through `uproot.compression._DecompressZLIB.library` ("zlib",
"isal" or "deflate"); the public `uproot.ZLIB.library`, a subclass's, only applies when writing. ISA-L's inflate
gives the same bytes as zlib's, ~2x faster on a bare read (benchmarks/RESULTS.md, issue 21), and
ROOT files are mostly ZLIB-compressed. tests/test_root_source.py checks the attribute still works.
"""

from __future__ import annotations

import uproot


def inflate_with_isal() -> bool:
    """Read ZLIB baskets with ISA-L when the isal package and uproot's switch exist; else zlib."""
    try:
        import isal.isal_zlib  # noqa: F401
    except ImportError:
        return False
    switch = getattr(uproot.compression, "_DecompressZLIB", None)
    if switch is None or not hasattr(switch, "library"):
        return False
    # ZLIB, which writes (generators, `hepray predict`), inherits the switch: pinned to what it was
    uproot.ZLIB.library = switch.library
    switch.library = "isal"
    return True
