"""edge-anomaly score: the dataset format (scientific-notation ts), one column, bad input."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from edge_consumer.anomaly.cli import main

HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'
MAC = "b8:27:eb:bf:9d:51"


def dataset(path: Path, rows: int = 400, spike_line: int = 300) -> Path:
    """Rows in the published format; the row on file line `spike_line` has a temp spike."""
    rng = random.Random(0)
    lines = []
    for i in range(rows):
        line = i + 2  # the header is line 1
        temp = round(22.0 + rng.gauss(0.0, 0.2), 1) + (8.0 if line == spike_line else 0.0)
        ts = 1.5945120943859746e9 + 3.7 * i
        values = [
            f"{ts / 1e9!r}E9" if i % 2 == 0 else repr(ts),  # as published, and plain
            MAC,
            repr(0.005 + rng.random() * 1e-4),
            repr(round(50.0 + rng.gauss(0.0, 0.5), 1)),
            "false",
            repr(0.0076 + rng.random() * 1e-4),
            "true" if i % 50 == 0 else "false",
            repr(0.02 + rng.random() * 1e-4),
            repr(round(temp, 1)),
        ]
        lines.append(",".join(f'"{v}"' for v in values) + "\n")
    path.write_text(HEADER + "".join(lines))
    return path


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


def test_scores_the_dataset_format(tmp_path: Path) -> None:
    path = dataset(tmp_path / "data.csv")
    text = path.read_text()
    assert text.splitlines()[1].startswith('"1.594512094385974')  # scientific notation
    assert 'E9",' in text.splitlines()[1]
    code, out = run(["score", str(path)])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"line 300  {MAC}  temp  spike  2020-07-12T")
    assert lines[-1] == "1 anomalies in 400 rows of 1 device(s): spike 1"


def test_json_lines(tmp_path: Path) -> None:
    code, out = run(["score", str(dataset(tmp_path / "data.csv")), "--json"])
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 1
    assert records[0]["line"] == records[0]["seq"] == 300
    assert (records[0]["kind"], records[0]["sensor"], records[0]["device_id"]) == (
        "spike",
        "temp",
        MAC,
    )


def test_one_column_with_iso_times(tmp_path: Path) -> None:
    rng = random.Random(1)
    rows = [
        f"2020-07-12T00:{i // 60:02d}:{i % 60:02d}Z,{round(20 + rng.gauss(0, 0.1), 2)}"
        for i in range(0, 600, 5)
    ]
    rows[60] = rows[60].split(",")[0] + ",35.0"
    path = tmp_path / "one.csv"
    path.write_text("when,reading,other\n" + "".join(f"{r},x\n" for r in rows))
    code, out = run(["score", str(path), "--time", "when", "--value", "reading"])
    assert code == 0, out
    assert out.splitlines()[0].startswith("line 62  reading  spike  2020-07-12T00:05:00")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ('"ts","device","co"\n', "data.csv:1: header lacks 'humidity', 'light'"),
        (
            HEADER + '"1.5945120943859746E9","b8:27:eb:bf:9d:51","0.005","51.0","false",'
            '"0.0076","false","0.02","warm"\n',
            "data.csv:2: column 'temp': 'warm' is not a number",
        ),
        (
            HEADER + '"1.5945120943859746E9","b8:27:eb:bf:9d:51","0.005","51.0","maybe",'
            '"0.0076","false","0.02","22.7"\n',
            "data.csv:2: column 'light': 'maybe' is not true or false",
        ),
        (
            HEADER + '"nan","b8:27:eb:bf:9d:51","0.005","51.0","false","0.0076","false",'
            '"0.02","22.7"\n',
            "data.csv:2: column 'ts': 'nan' is not a finite number",
        ),
        (HEADER + '"1.5945120943859746E9","b8:27:eb:bf:9d:51"\n', "data.csv:2: expected 9"),
    ],
)
def test_bad_input_is_one_error_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "data.csv"
    path.write_text(content)
    code, out = run(["score", str(path)])
    assert code == 2
    assert out == ""  # nothing printed before the error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("edge-anomaly: error: ")
    assert message in err[0]


def test_bad_time_column_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "one.csv"
    path.write_text("t,v\n1.5945120943859746E9,1\nyesterday,2\n")
    assert run(["score", str(path), "--time", "t", "--value", "v"])[0] == 2
    assert "one.csv:3: column 't': 'yesterday' is neither epoch seconds nor an ISO" in (
        capsys.readouterr().err
    )
    assert run(["score", str(tmp_path / "absent.csv")])[0] == 2
    assert "absent.csv: cannot read: No such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run(["score", str(path), "--time", "t"])
    assert e.value.code == 2


def test_a_nab_file_as_it_is(tmp_path: Path) -> None:
    """NAB's format (timestamp,value; naive ISO times) needs no options."""
    rng = random.Random(2)
    rows = [
        f"2014-04-01 {i // 12:02d}:{i % 12 * 5:02d}:00,{round(20 + rng.gauss(0, 0.3), 3)}"
        for i in range(288)
    ]
    rows[200] = rows[200].split(",")[0] + ",45.0"
    path = tmp_path / "art.csv"
    path.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    code, out = run(["score", str(path)])
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("line 202  value  spike  2014-04-01T16:40:00")
    assert lines[-1] == "1 anomalies in 288 rows of 1 device(s): spike 1"
