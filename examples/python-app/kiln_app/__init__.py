"""kiln's python example: a label made with a dependency from a package index."""

from kiln_pad import pad


def label(n: int) -> str:
    """A build number, zero-padded to six digits."""
    return "build-" + pad(n, 6, "0")
