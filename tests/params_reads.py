"""Which params keys a piece of code reads, measured by running it (tests/test_stage_params.py).

:func:`recording_reads` copies a :class:`~nirgan.config.Config` into look-alike classes (each a
subclass of the section's own class, so ``isinstance`` checks, properties, methods and
``model_copy`` behave as before) that note the dotted key of every value read from them:

- an attribute read notes its key (``train.lambda_lr``); reading a sub-section alone notes
  nothing, only what is read from it (``augment.scale.p``);
- a property or method (``train.epochs``, ``expression_train.resolved()``) runs on the copy, so
  the fields it reads are noted;
- ``model_dump`` (and iterating a section) reads every key it returns: code that hashes or logs a
  whole section depends on all of it.

A copy pickled to another process arrives there as a plain config (reads there are not noted):
the test runs every stage with one CPU, in this process.
"""

from __future__ import annotations

from typing import Any

from nirgan.config import Config, Section


def _plain(cls: type[Section], values: dict[str, Any]) -> Section:
    return cls.model_construct(**values)


def _note_dump(reads: set[str], prefix: str, dumped: Any) -> None:
    if isinstance(dumped, dict):
        for key, value in dumped.items():
            _note_dump(reads, f"{prefix}{key}.", value)
    else:
        reads.add(prefix.rstrip("."))


def _recording_class(cls: type[Section], prefix: str, reads: set[str]) -> type[Section]:
    fields = set(cls.model_fields)

    def __getattribute__(self: Section, name: str) -> Any:  # noqa: N807
        value = cls.__getattribute__(self, name)
        if name in fields and not isinstance(value, Section):
            reads.add(prefix + name)
        return value

    def model_dump(self: Section, *args: Any, **kwargs: Any) -> dict[str, Any]:
        dumped = cls.model_dump(self, *args, **kwargs)
        _note_dump(reads, prefix, dumped)
        return dumped

    def model_dump_json(self: Section, *args: Any, **kwargs: Any) -> str:
        _note_dump(reads, prefix, cls.model_dump(self, mode="json", **{
            k: v for k, v in kwargs.items() if k in ("include", "exclude", "by_alias", "exclude_none",
                                                     "exclude_defaults", "exclude_unset")}))
        return cls.model_dump_json(self, *args, **kwargs)

    def __iter__(self: Section) -> Any:  # noqa: N807
        for name, value in cls.__iter__(self):
            if not isinstance(value, Section):
                reads.add(prefix + name)
            yield name, value

    def __reduce__(self: Section) -> Any:  # noqa: N807
        return _plain, (cls, dict(self.__dict__))

    namespace = {"__getattribute__": __getattribute__, "model_dump": model_dump, "model_dump_json": model_dump_json,
                 "__iter__": __iter__, "__reduce__": __reduce__, "__module__": __name__,
                 "__qualname__": f"Recording{cls.__name__}"}
    return type(f"Recording{cls.__name__}", (cls,), namespace)


def recording_reads(cfg: Config) -> tuple[Config, set[str]]:
    """A copy of ``cfg`` that notes every key read from it, and the set it notes them in."""
    reads: set[str] = set()
    classes: dict[tuple[type, str], type[Section]] = {}

    def copy(section: Section, prefix: str) -> Section:
        cls = type(section)
        if (cls, prefix) not in classes:
            classes[cls, prefix] = _recording_class(cls, prefix, reads)
        values = {name: copy(value, f"{prefix}{name}.") if isinstance(value, Section) else value
                  for name, value in section.__dict__.items()}
        return classes[cls, prefix].model_construct(_fields_set=set(section.model_fields_set), **values)

    return copy(cfg, ""), reads  # type: ignore[return-value]
