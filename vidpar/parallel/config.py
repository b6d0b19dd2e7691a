"""The parallel layout as a value: degrees per mesh axis, validated, no side effects."""

from __future__ import annotations

from dataclasses import dataclass

AXES: tuple[str, ...] = ("cfg", "ring", "ulysses")  # mesh order, outermost first; ulysses innermost


@dataclass(frozen=True)
class ParallelConfig:
    """Degrees of the three mesh axes.

    ``ulysses`` splits attention heads (all-to-all), ``ring`` rotates K/V blocks between ranks, and ``cfg`` runs
    the conditional and unconditional branches of classifier-free guidance on different rank groups. Tokens are
    split over ``ring * ulysses`` ranks. Creating a config touches nothing; see ``init_parallel``.
    """

    ulysses: int = 1
    ring: int = 1
    cfg: int = 1

    def __post_init__(self) -> None:
        for name in AXES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelConfig.{name} must be a positive int, got {value!r}")

    @property
    def world_size(self) -> int:
        """Number of ranks the layout needs: ``ulysses * ring * cfg``."""
        return self.ulysses * self.ring * self.cfg

    @property
    def sp_degree(self) -> int:
        """Number of ranks one video's tokens are split over: ``ulysses * ring``."""
        return self.ulysses * self.ring

    def mesh_shape(self) -> tuple[int, int, int]:
        """Degrees in mesh order ``(cfg, ring, ulysses)``."""
        return (self.cfg, self.ring, self.ulysses)

    def check_world_size(self, world_size: int) -> None:
        """Raise ``ValueError`` unless the degrees multiply to ``world_size``."""
        if self.world_size != world_size:
            raise ValueError(
                f"ParallelConfig(ulysses={self.ulysses}, ring={self.ring}, cfg={self.cfg}) needs "
                f"{self.world_size} ranks (ulysses*ring*cfg) but the world size is {world_size}"
            )
