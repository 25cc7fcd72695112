"""Every kind of stage a recipe may use: the ones dataengine ships, and those installed packages register under
the `dataengine.stages` entry-point group. Each kind checks its own block of a recipe (`Stage.check`) whichever
pipeline the recipe picks; a plug-in stage also brings its own recipe block (`Stage.config`)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from dataengine.balance.stage import BalanceStage
from dataengine.curate.stage import CurateStage
from dataengine.errors import UserError
from dataengine.generate.stage import GenerateStage
from dataengine.ingest.stage import IngestStage
from dataengine.judge.stage import JudgeStage
from dataengine.publish.stage import PublishStage
from dataengine.route.stage import RouteStage
from dataengine.score.stage import ScoreStage
from dataengine.stage import Stage
from dataengine.train.evaluate_stage import EvaluateStage
from dataengine.train.stage import TrainStage

SHIPPED: tuple[type[Stage], ...] = (
    GenerateStage,
    IngestStage,
    CurateStage,
    JudgeStage,
    RouteStage,
    BalanceStage,
    ScoreStage,
    TrainStage,
    EvaluateStage,
    PublishStage,
)

ENTRY_POINT_GROUP = "dataengine.stages"


@cache
def plugins() -> tuple[type[Stage], ...]:
    """Stage classes that installed packages register: `[project.entry-points."dataengine.stages"]`."""
    found = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
        except Exception as exc:  # a broken plug-in names itself instead of a traceback from deep in importlib
            raise UserError(f"stage plug-in {entry.name!r} ({entry.value}) cannot be loaded: {exc}") from exc
        if not (isinstance(cls, type) and Stage in cls.__mro__):
            raise UserError(f"stage plug-in {entry.name!r} ({entry.value}) is not a dataengine.Stage subclass")
        found.append(cls)
    return tuple(found)


def all_stages() -> tuple[type[Stage], ...]:
    return SHIPPED + plugins()
