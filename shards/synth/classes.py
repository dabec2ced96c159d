"""The synthetic design classes: Locarno-like code, class name, object noun and parametric family."""

from __future__ import annotations

from dataclasses import dataclass

from .families import _Builder, _bag, _bicycle, _bookcase, _bottle, _camera, _car, _chair, _cup, _fan, _guitar, _hammer, _hat, _lamp, _laptop, _pot, _robot, _shoe, _spoon, _storage_box, _table, _telephone, _vase, _washer, _watch


@dataclass(frozen=True)
class DesignClass:
    """A synthetic design class: Locarno-style code ``CC-SS``, lower-case name, object noun."""

    code: str
    name: str
    noun: str
    builder: _Builder

    @property
    def label(self) -> str:
        """``"07-01 cups and mugs"``."""
        return f"{self.code} {self.name}"


#: All available classes, in the order used by ``num_classes`` (the first ``K`` are taken).
DESIGN_CLASSES: tuple[DesignClass, ...] = (
    DesignClass("07-01", "cups and mugs", "cup", _cup),
    DesignClass("06-01", "seats / chairs", "chair", _chair),
    DesignClass("26-05", "lamps", "lamp", _lamp),
    DesignClass("09-01", "bottles", "bottle", _bottle),
    DesignClass("12-08", "cars", "car", _car),
    DesignClass("14-03", "telephones", "telephone", _telephone),
    DesignClass("07-02", "cooking pots", "cooking pot", _pot),
    DesignClass("06-03", "tables", "table", _table),
    DesignClass("02-04", "footwear", "shoe", _shoe),
    DesignClass("10-07", "watches", "wristwatch", _watch),
    DesignClass("03-01", "bags", "handbag", _bag),
    DesignClass("08-05", "tools", "hammer", _hammer),
    DesignClass("12-11", "bicycles", "bicycle", _bicycle),
    DesignClass("09-03", "boxes and cases", "storage box", _storage_box),
    DesignClass("11-02", "vases", "vase", _vase),
    DesignClass("14-02", "computers", "laptop computer", _laptop),
    DesignClass("16-01", "cameras", "camera", _camera),
    DesignClass("23-04", "fans", "electric fan", _fan),
    DesignClass("15-05", "washing machines", "washing machine", _washer),
    DesignClass("21-01", "toys", "toy robot", _robot),
    DesignClass("02-03", "headwear", "hat", _hat),
    DesignClass("07-03", "table utensils", "spoon", _spoon),
    DesignClass("06-04", "storage furniture", "bookcase", _bookcase),
    DesignClass("17-03", "string instruments", "guitar", _guitar),
)
