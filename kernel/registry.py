"""Named driver registries: a setting picks a port's driver by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from kernel.errors import ConfigError

T = TypeVar("T")


class DriverRegistry(Generic[T]):
    """Maps driver names to factories for one port.

    ``create`` refuses an unknown name with an error that names the setting and lists the
    valid drivers, so a typo in ``LIVORA_*`` stops start-up with a message a person can act on.
    """

    def __init__(self, port: str, variable: str) -> None:
        self.port = port
        self.variable = variable
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.port} driver {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    @property
    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, name: str, /, *args: object, **kwargs: object) -> T:
        try:
            factory = self._factories[name]
        except KeyError:
            raise ConfigError(
                self.variable,
                f"unknown {self.port} driver {name!r}; valid drivers: {', '.join(self.names)}",
            ) from None
        return factory(*args, **kwargs)
