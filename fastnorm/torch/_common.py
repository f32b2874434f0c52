"""What every part of fastnorm.torch shares (a leaf module: torch only)."""


class FastnormFallbackWarning(UserWarning):
    """A fastnorm module, loss or optimizer ran torch's own implementation (unsupported dtype or device)."""
