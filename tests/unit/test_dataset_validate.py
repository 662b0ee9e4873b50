"""edge-dataset validate: the published format, with errors naming column and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from edge_dataset import cli
from edge_dataset.published import HEADER_LINE
from edge_dataset.reader import DatasetError, load

MACS = ("b8:27:eb:bf:9d:51", "00:0f:00:70:91:0a", "1c:bf:ce:15:ec:4d")


def row(ts: float, mac: str, temp: str = "22.7") -> str:
    values = [f"{ts!r}", mac, "0.0049", "51.0", "false", "0.0076", "true", "0.0204", temp]
    return ",".join(f'"{v}"' for v in values)


def write(tmp_path: Path, lines: list[str], header: bytes = HEADER_LINE) -> Path:
    path = tmp_path / "data.csv"
    path.write_bytes(header + "".join(line + "\n" for line in lines).encode())
    return path


def good_lines(n: int = 9) -> list[str]:
    return [row(1594512094.0 + i, MACS[i % 3]) for i in range(n)]


def error_of(path: Path) -> str:
    with pytest.raises(DatasetError) as info:
        load(path)
    return str(info.value)


def test_valid_file_loads_with_counts(tmp_path: Path) -> None:
    ds = load(write(tmp_path, [*good_lines(), good_lines()[4]]))
    assert ds.rows == 10
    assert ds.quoted
    assert not ds.synthetic
    assert ds.rows_per_device() == {MACS[1]: 4, MACS[2]: 3, MACS[0]: 3}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b'"ts","device","co","humidity","light","lpg","motion","smoke"\n', "lacks column 'temp'"),
        (HEADER_LINE.rstrip() + b',"extra"\n', "unexpected column 'extra'"),
    ],
)
def test_header_errors_name_the_column(tmp_path: Path, header: bytes, expected: str) -> None:
    assert expected in error_of(write(tmp_path, good_lines(), header=header))


def test_unparsable_value_names_column_and_line(tmp_path: Path) -> None:
    lines = good_lines()
    lines[4] = row(1594512098.0, MACS[1], temp="warm")
    message = error_of(write(tmp_path, lines))
    assert "line 6" in message  # header is line 1, so lines[4] is line 6
    assert "'temp'" in message
    assert "'warm'" in message


def test_empty_value_is_an_error(tmp_path: Path) -> None:
    lines = good_lines()
    lines[2] = lines[2].replace('"0.0049"', '""')
    message = error_of(write(tmp_path, lines))
    assert "line 4: column 'co' is empty" in message


def test_bad_boolean_and_mac(tmp_path: Path) -> None:
    lines = good_lines()
    lines[7] = lines[7].replace('"false"', '"maybe"')
    assert "line 9: column 'light'" in error_of(write(tmp_path, lines))
    lines = good_lines()
    lines[1] = lines[1].replace(MACS[1], "not-a-mac")
    assert "line 3: column 'device'" in error_of(write(tmp_path, lines))


def test_wrong_field_counts(tmp_path: Path) -> None:
    lines = good_lines()
    lines[3] += ',"1"'
    assert "line 5: 10 fields, expected 9" in error_of(write(tmp_path, lines))
    lines = good_lines()
    lines[3] = lines[3].rsplit(",", 1)[0]
    assert "line 5: 8 fields, expected 9" in error_of(write(tmp_path, lines))


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    assert "file is empty" in error_of(path)
    assert "no data rows" in error_of(write(tmp_path, []))


def test_unquoted_values_are_requoted(tmp_path: Path) -> None:
    lines = [line.replace('"', "") for line in good_lines()]
    ds = load(write(tmp_path, lines))
    assert not ds.quoted
    assert ds.lines[0] == good_lines()[0].encode()


def test_cli_one_line_error_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = good_lines()
    lines[0] = lines[0].replace('"51.0"', '"wet"')
    path = write(tmp_path, lines)
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"edge-dataset: error: {path}: line 2: column 'humidity' is 'wet' not a finite number\n"
    )


def test_cli_one_device_only_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, [row(1594512094.0 + i, MACS[0]) for i in range(5)])
    assert cli.main(["validate", str(path)]) == 2
    assert "expected 3 source devices, found 1" in capsys.readouterr().err
    assert cli.main(["validate", "--allow-sources-mismatch", str(path)]) == 0


def test_cli_warns_when_figures_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(write(tmp_path, good_lines()))]) == 0
    out = capsys.readouterr()
    assert "differs from the published real file" in out.err
    assert "9 rows, published 405,184" in out.err
    assert "time range: 2020-07-12T00:01:34.000Z" in out.out
