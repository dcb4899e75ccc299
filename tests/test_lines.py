"""The pre-training line's one owner (``maskdm_sweeps.lines``) and the step-file names (``layout.step_file``)."""

from maskdm_sweeps.layout import SweepDir, step_file, step_files, step_of
from maskdm_sweeps.lines import MAIN, branch_name, keeping_line, line_at, line_named, lines_of, unit_key, unit_line


def test_a_step_file_name_reads_back_as_its_step_and_only_with_its_suffix():
    assert step_file(40, ".pt") == "step_000000040.pt"
    assert step_of(step_file(40, ".pt")) == 40 and step_of(step_file(40, ".pt"), ".pt") == 40
    assert step_of(step_file(1_234_567_890, ".json"), ".json") == 1_234_567_890  # past nine digits
    assert step_of("step_000000040.pt.corrupt", ".pt") is None  # set aside: no longer a state file
    assert step_of(".step_000000040.pt.123.tmp") is None and step_of("notes.txt") is None


def test_step_files_lists_one_suffix_by_step(tmp_path):
    for name in (step_file(20, ".pt"), step_file(3, ".pt"), step_file(3, ".json"), "step_000000007.pt.corrupt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in step_files(tmp_path, ".pt")] == [step_file(3, ".pt"), step_file(20, ".pt")]
    assert step_files(tmp_path / "missing", ".pt") == []


def _keep(line, step):
    line.milestone(step).parent.mkdir(parents=True, exist_ok=True)
    line.milestone(step).write_bytes(b"state")
    line.milestone_info(step).write_text("{}")


def test_a_branch_of_a_branch_names_its_unit_origin_and_stretches(tmp_path):
    layout = SweepDir(tmp_path, "s")
    main = line_named(layout, "k", MAIN)
    first = line_named(layout, "k", branch_name(10, 15))
    second = line_named(layout, "k", branch_name(15, 18))
    _keep(main, 10)
    first.start_from(main, 10)
    _keep(first, 15)
    second.start_from(first, 15)
    _keep(second, 18)

    assert [line.unit for line in lines_of(layout, "k")] == ["k", "k/from-10-to-15", "k/from-15-to-18"]
    assert unit_key(second.unit) == "k" and unit_line(second.unit) == "from-15-to-18" and unit_line("k") == MAIN
    assert second.origin() == (first, 15) and first.origin() == (main, 10) and main.origin() is None
    assert second.stretches(18) == [(main.path, 0, 10), (first.path, 10, 15), (second.path, 15, 18)]
    assert keeping_line(layout, "k", 15) == first and keeping_line(layout, "k", 12) is None
    assert line_at(second.path, "k") == second and line_at(main.path, "k") == main
