"""One setting of a training run, as the settings table (npvit.settings) holds it: its name and flag, its
default, its help, its JSON kind and the argument type that checks it.

Nothing here imports the rest of npvit, so the table's rows can be described below every floor that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Setting:
    """One setting of a run.

    Attributes:
        name: the key in the settings dict and config.json; the flag is ``--`` + name with dashes.
        default: the value when neither the flag nor a resumed run gives one. None for a model setting means
            "from --preset".
        help: what the setting does, without its default (generated).
        group: the --help section.
        kind: the JSON type of the value: "int", "float", "ints" (a list of positive ints), "bool", "str".
        type: the argparse type; it also checks a value read back from a file.
        choices: the allowed values of a "str" setting, when there is a fixed set.
        preset_field: for a model setting, the ViTConfig field whose preset value stands in for the default.
        metavar: what --help shows as the flag's argument.
        nullable: None is an allowed value (the default, or "from the preset").
    """

    name: str
    default: Any
    help: str
    group: str
    kind: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    preset_field: str | None = None
    metavar: str | None = None
    aliases: tuple[str, ...] = ()
    nullable: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def model_setting(name: str, field: str, kind: str, type_: Callable[[str], Any] | None, help: str,
                  metavar: str | None = None, choices: tuple[str, ...] | None = None) -> Setting:
    """A model setting: None (the default) takes the preset's value."""
    return Setting(name, None, help, "model", kind, type_, choices=choices, preset_field=field, metavar=metavar,
                   nullable=True)
