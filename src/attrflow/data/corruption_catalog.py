"""Names, severity tables and families of the ImageNet-C corruptions, without numpy or torch.

The planner and the config checks need the names while the Snakefile parses, where importing
torch would cost seconds per invocation; the pixel work lives in `attrflow.data.corruptions`.
The tables are the constants of Hendrycks & Dietterich's ImageNet-C generator (index =
severity − 1); what each number means is documented in `attrflow.data.corruptions`.
"""

from __future__ import annotations

SEVERITY_TABLES: dict[str, tuple] = {
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to HSV value
    "saturate": ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2)),  # S·a + b
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),  # σ in px of a 224-px image
    "defocus_blur": ((3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5)),  # disk r, alias σ
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # noise std
    "shot_noise": (60.0, 25.0, 12.0, 5.0, 3.0),  # Poisson rate λ
}
CORRUPTIONS = tuple(SEVERITY_TABLES)
ALIASES = {"saturation": "saturate"}  # UNI (Choi et al., 2024) Sec. 3.2 says "saturation"
SEVERITIES = (1, 2, 3, 4, 5)
# The UNI (Choi et al., 2024) Sec. 3.2 corruption families; each is what one static IG baseline is biased towards.
FAMILIES: dict[str, tuple[str, ...]] = {
    "digital": ("brightness", "saturate"),
    "blur": ("gaussian_blur", "defocus_blur"),
    "noise": ("gaussian_noise", "shot_noise"),
}


def canonical_corruption(name: str) -> str:
    """The ImageNet-C name for `name` (an alias such as ``saturation`` → ``saturate``)."""
    canonical = ALIASES.get(name, name)
    if canonical not in SEVERITY_TABLES:
        known = ", ".join([*CORRUPTIONS, *ALIASES])
        raise ValueError(f"unknown corruption {name!r}; known: {known}")
    return canonical


def family_of(corruption: str) -> str:
    canonical = canonical_corruption(corruption)
    return next(family for family, members in FAMILIES.items() if canonical in members)


def check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
