"""The engine's scheduler on its own: what a job attacks, evaluates and in which blocks, from what the rows hold;
tiles that cover the map once; memory budgets. No torch: the module is pure Python."""

import subprocess
import sys

import pytest

from satlab.sat.schedule import (Budget, RowState, Tile, check_cover, job_tile, missing_tiles, parse_budget,
                                 plan_tile, target_blocks, tile_list, whole_map)
from satlab.utils import SatlabError

NAMES = ["a", "b", "c", "d"]
KEYS = {n: f"k{n}" for n in NAMES}


def row(*targets: str, images: bool = True) -> RowState:
    return RowState.of([KEYS[t] for t in targets], images)


def test_the_scheduler_imports_no_torch():
    code = "import sys, satlab.sat.schedule; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_an_empty_cache_attacks_every_source_and_evaluates_every_other_pair():
    plan = plan_tile(whole_map(NAMES), KEYS, {}, {}, Budget())
    assert plan.attack == NAMES and plan.reuse == [] and plan.lacking == {}
    assert plan.columns == {s: [t for t in NAMES if t != s] for s in NAMES}  # own columns come from the attack
    assert plan.blocks == [NAMES]


def test_a_run_after_a_subset_attacks_only_the_new_sources():
    rows = {"a": row("a", "b"), "b": row("b", "a")}
    plan = plan_tile(whole_map(["a", "b", "c"]), KEYS, rows, {}, Budget())
    assert plan.attack == ["c"] and plan.columns == {"a": ["c"], "b": ["c"], "c": ["a", "b"]}
    assert plan.lacking == {"a": ["c"], "b": ["c"]}


def test_rows_without_images_are_attacked_again_only_when_they_lack_targets():
    rows = {"a": row("a", "b", "c", images=False), "b": row("b", "a", images=False), "c": row("c", "a", "b")}
    plan = plan_tile(whole_map(["a", "b", "c"]), KEYS, rows, {}, Budget())
    assert plan.attack == ["b"] and plan.reuse == ["a", "c"] and plan.columns == {"b": ["c"]}


def test_complete_rows_need_nothing_and_extra_columns_do_not_matter():
    rows = {n: row(*NAMES, images=False) for n in ["a", "b"]}
    plan = plan_tile(whole_map(["a", "b"]), KEYS, rows, {}, Budget(models=1))
    assert plan.done and plan.reuse == ["a", "b"] and plan.blocks == []


def test_a_tile_plans_its_own_pairs_only():
    tile = tile_list(NAMES, "2x2")[1]  # sources a, c x targets b, d
    assert (tile.sources, tile.targets) == (("a", "c"), ("b", "d"))
    plan = plan_tile(tile, KEYS, {"a": row("a", "b")}, {}, Budget())
    assert plan.attack == ["c"] and plan.columns == {"a": ["d"], "c": ["b", "d"]} and plan.blocks == [["b", "d"]]


@pytest.mark.parametrize("budget,blocks", [
    (Budget(models=1), [["a"], ["b"], ["c"], ["d"]]), (Budget(models=3), [["a", "b", "c"], ["d"]]),
    (Budget(nbytes=10), [["a", "b"], ["c"], ["d"]]), (Budget(nbytes=100), [["a", "b", "c", "d"]]), (Budget(), [NAMES]),
])
def test_blocks_fit_the_budget(budget, blocks):
    assert target_blocks(NAMES, {"a": 4, "b": 6, "c": 7, "d": 9}, budget) == blocks


def test_a_budget_smaller_than_one_model_names_it():
    with pytest.raises(SatlabError, match=r"sat.memory_budget=8B is smaller than model 'd' .* give at least 1MiB"):
        target_blocks(NAMES, {"a": 4, "b": 6, "c": 7, "d": 9}, Budget(nbytes=8, text="8B"))


@pytest.mark.parametrize("value,budget", [
    ("auto", None), (None, None), (3, Budget(models=3, text="3")), ("2", Budget(models=2, text="2")),
    ("1.5GiB", Budget(nbytes=3 * 2**29, text="1.5GiB")), ("512MiB", Budget(nbytes=2**29, text="512MiB")),
])
def test_budgets_parse(value, budget):
    assert parse_budget(value) == budget


@pytest.mark.parametrize("value,message", [
    (0, "at least one model"), (-2, "at least one model"), ("lots", "use auto"), (True, "use auto"),
    ("0GiB", "holds no model"), ("4 TB", "use auto"),
])
def test_bad_budgets_are_refused(value, message):
    with pytest.raises(SatlabError, match=message):
        parse_budget(value)


def test_grids_cover_the_map_once_and_name_their_tiles():
    for spec in ("1x1", "2x3", "4x4", "4x1"):
        tiles = tile_list(NAMES, spec)
        check_cover(NAMES, tiles)
        assert [t.index for t in tiles] == list(range(len(tiles)))
        assert sum(len(t.pairs()) for t in tiles) == len(NAMES) ** 2


@pytest.mark.parametrize("tiles,message", [
    ([{"sources": "all", "targets": ["a", "b"]}, {"sources": ["a"], "targets": ["b", "c", "d"]}],
     "tiles 0 and 1 both hold the pair a -> b"),
    ([{"sources": "all", "targets": ["a", "b"]}], r"leave 8 pair\(s\) of the map in no tile \(a -> c, a -> d"),
    ([{"sources": ["z"], "targets": "all"}], "not in the model set: z"),
    ([{"sources": ["a"]}], r"sat.tiles\[0\] must be"),
    ("5x1", "between 1 and the 4 models"), ("2by2", "use a grid"),
])
def test_bad_tile_lists_are_refused(tiles, message):
    with pytest.raises(SatlabError, match=message):
        tile_list(NAMES, tiles)


@pytest.mark.parametrize("kwargs,message", [
    ({"shard": "0/2", "tiles": "2x2", "tile": 0}, "keep one"), ({"tile": 1}, "needs sat.tiles"),
    ({"tiles": "2x2"}, "say which of the 4 tiles"), ({"tiles": "2x2", "tile": "x"}, "say which"),
    ({"tiles": "2x2", "tile": 0, "assemble": True}, "drop sat.tile"), ({"shard": "0/2", "assemble": True}, "drop sat.shard"),
])
def test_bad_job_choices_are_refused(kwargs, message):
    with pytest.raises(SatlabError, match=message):
        job_tile(NAMES, **kwargs)


def test_jobs_and_missing_tiles():
    assert job_tile(NAMES) is None and job_tile(NAMES, tiles="2x2", assemble=True) is None
    assert job_tile(NAMES, shard="1/2") == Tile(("b", "d"), tuple(NAMES))
    tiles = tile_list(NAMES, "2x2")
    assert job_tile(NAMES, tiles="2x2", tile=3) == tiles[3]
    assert missing_tiles(tiles, {"b": ["c"]}) == [tiles[2]]  # b is a source of tiles 2, 3; c a target of 0, 2
