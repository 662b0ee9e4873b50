"""Reading the published CSV format into compact column storage."""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest
from edge_agent.config import ConfigError
from edge_agent.dataset import COLUMNS, parse_row, read_slice

HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'
GOOD = (
    '"1.5945120943859746E9","b8:27:eb:bf:9d:51","0.004955938648391245","51.0","false",'
    '"0.00765082227055719","false","0.02041127012241292","22.7"\n'
    '"1.594512094735584E9","00:0f:00:70:91:0a","0.002840","76.0","true","0.005114","false",'
    '"0.013275","19.700000762939453"\n'
    '"1594512104.123","1c:bf:ce:15:ec:4d","0.004403","76.800003","TRUE","0.007023","true",'
    '"0.018628","27.0"\n'
)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "slice.csv"
    path.write_text(text)
    return str(path)


def test_columns_match_published_header() -> None:
    assert ",".join(f'"{c}"' for c in COLUMNS) + "\n" == HEADER


def test_parse_row_scientific_ts_and_booleans() -> None:
    r = parse_row(
        [
            "1.5945120943859746E9",
            "b8:27:eb:bf:9d:51",
            "0.1",
            "51",
            "true",
            "0.2",
            "false",
            "0.3",
            "22.7",
        ]
    )
    assert r.ts == 1594512094.3859746
    assert r.device == "b8:27:eb:bf:9d:51"
    assert (r.light, r.motion) == (True, False)
    assert (r.co, r.humidity, r.lpg, r.smoke, r.temp) == (0.1, 51.0, 0.2, 0.3, 22.7)


@pytest.mark.parametrize(
    "row",
    [
        ["x", "d", "1", "1", "true", "1", "false", "1", "1"],  # ts not a number
        ["1", "d", "1", "1", "yes", "1", "false", "1", "1"],  # not true/false
        ["1", "d", "nan", "1", "true", "1", "false", "1", "1"],  # JSON cannot carry NaN
        ["1", "d", "1", "1", "true", "1", "false", "1", "inf"],
        ["1", "", "1", "1", "true", "1", "false", "1", "1"],  # no device
        ["1", "d", "1"],  # too short
    ],
)
def test_parse_row_rejects(row: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_row(row)


def test_read_slice_values_and_compact_storage(tmp_path: Path) -> None:
    s = read_slice(write(tmp_path, HEADER + GOOD))
    assert len(s) == 3 and s.skipped == 0
    assert isinstance(s.offsets, array) and s.offsets.itemsize == 8  # no per-row objects
    assert [s[i].device for i in range(3)] == [
        "b8:27:eb:bf:9d:51",
        "00:0f:00:70:91:0a",
        "1c:bf:ce:15:ec:4d",
    ]
    assert s.ts_at(2) == 1594512104.123
    first, second, third = s[0], s[1], s[2]
    assert first.ts == 1594512094.3859746
    assert first.co == 0.004955938648391245  # full double precision survives
    assert (first.light, first.motion) == (False, False)
    assert second.temp == 19.700000762939453 and second.light is True
    assert third.ts == 1594512104.123 and (third.light, third.motion) == (True, True)
    s.close()


def test_bad_rows_skipped_and_counted(tmp_path: Path) -> None:
    bad = (
        '"oops","b8:27:eb:bf:9d:51","0.1","51","false","0.2","false","0.3","22"\n'
        '"1.6E9","b8:27:eb:bf:9d:51","0.1"\n'
        '"1.6E9","b8:27:eb:bf:9d:51","0.1","51","maybe","0.2","false","0.3","22"\n'
        "\n"  # blank lines are not rows
        '"1.6E9","b8:27:eb:bf:9d:51","0.1","51","false","0.2","false","0.3","22","extra"\n'
    )
    s = read_slice(write(tmp_path, HEADER + GOOD + bad))
    assert (len(s), s.skipped) == (3, 4)
    s.close()


def test_quoting_and_column_order(tmp_path: Path) -> None:
    text = (
        '"device","ts","temp","humidity","co","lpg","smoke","light","motion"\n'
        '"a ""quoted"", device",1.6E9,"21.5","50","0.1","0.2","0.3","false","true"\n'
    )
    s = read_slice(write(tmp_path, text))
    assert s[0].device == 'a "quoted", device'
    assert (s[0].ts, s[0].temp, s[0].motion) == (1.6e9, 21.5, True)
    s.close()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        (HEADER, "no valid rows (0 skipped)"),
        (HEADER + '"x","y"\n', "no valid rows (1 skipped)"),
        ('"ts","device"\n"1","d"\n', "header lacks co"),
    ],
)
def test_unusable_files_are_config_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        read_slice(write(tmp_path, text))
    assert exc.value.setting == "DATASET_PATH"
    assert fragment in str(exc.value)


def test_nul_byte_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "slice.csv"
    path.write_bytes((HEADER + GOOD).encode() + b'"1.6E9","d\x00","1","1","true","1"\n')
    s = read_slice(str(path))
    assert s.skipped == 1
    s.close()


def test_rewritten_in_place_is_a_runtime_error(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + GOOD)
    s = read_slice(path)
    with open(path, "w") as f:  # truncate and rewrite the same inode
        f.write("garbage\n" * 50)
    with pytest.raises(RuntimeError, match="changed under the agent"):
        s[1]
    s.close()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DATASET_PATH: cannot read"):
        read_slice(str(tmp_path / "nope.csv"))
