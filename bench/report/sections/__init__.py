"""The report section kinds, one module each; importing this package registers them in
:data:`bench.report.kinds.SECTIONS`, in the order listed to users."""

from bench.report.sections import pivot, scaling, curves, ranking, time_to_accuracy, stability, lr_schedule  # noqa: I001 (registration order)

__all__ = ["pivot", "scaling", "curves", "ranking", "time_to_accuracy", "stability", "lr_schedule"]
