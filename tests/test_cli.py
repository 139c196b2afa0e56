"""The command line: each subcommand run as a user runs it, `python rollNumber_05.py SUBCOMMAND ...` in a fresh
process, and the one-line errors for bad input.

Starting Python with torch costs seconds of CPU, so the module fixture `cli` runs each command in COMMANDS
once, a few side by side, and each test checks one result. Bad input is checked through main() in-process.
"""
import json
import re

import pytest
from PIL import Image

import rollNumber_05 as ddpm
from conftest import TINY_TRAIN_FLAGS, run_cli_many, save_model_file, tiny_config_values

TRAIN = ["train", "--data-dir", "{data}", "--out-dir", "{tmp}/{name}", *TINY_TRAIN_FLAGS, "--epochs", "1"]

# Each run through a fresh process.
COMMANDS = {
    "sample_ddim": ["sample", "--checkpoint", "{model}", "--sampler", "ddim", "--steps", "5", "--num-samples", "4",
                    "--device", "cpu", "--out", "{tmp}/ddim.png"],
    "sample_ddpm": ["sample", "--checkpoint", "{model}", "--sampler", "ddpm", "--num-samples", "4",
                    "--class-name", "fox", "--device", "cpu", "--out", "{tmp}/ddpm.png"],
    "forward": ["forward", "--data-dir", "{data}", "--class-name", "Owl", "--image-size", "16", "--out",
                "{tmp}/forward.png"],
    "evaluate": ["evaluate", "--checkpoint", "{model}", "--data-dir", "{data}", "--num-samples", "4",
                 "--steps", "5", "--device", "cpu", "--out-json", "{tmp}/metrics.json"],
    # a mistake, end to end: exit status and stderr of the real process
    "missing_checkpoint": ["sample", "--checkpoint", "{tmp}/nowhere.pt", "--device", "cpu"],
}

# Mistakes a user can make -> the words the one-line error must hold. Checked through main() in this process,
# which is what the script's `sys.exit(main())` runs; the end-to-end run above shows the wiring.
BAD_INPUT = {
    "missing_data_dir": ([*TRAIN[:2], "{tmp}/nowhere", *TRAIN[3:]], "does not exist"),
    "unknown_class": ([*TRAIN, "--classes", "Crow,Unicorn"], "no class folder named Unicorn"),
    "too_few_images": ([*TRAIN, "--images-per-class", "20"], "class Crow has 4 usable images"),
    "image_size_not_divisible": ([*TRAIN, "--image-size", "17"], "--image-size 17 does not fit this U-Net"),
    "epochs_zero": ([*TRAIN, "--epochs", "0"], "argument --epochs: must be a positive whole number, got 0"),
    "negative_batch_size": ([*TRAIN, "--batch-size", "-1"],
                            "argument --batch-size: must be a positive whole number, got -1"),
    "unknown_sampler": (["sample", "--checkpoint", "{model}", "--sampler", "euler"],
                        "argument --sampler: invalid choice: 'euler'"),
    "missing_checkpoint": (["sample", "--checkpoint", "{tmp}/nowhere.pt", "--device", "cpu"],
                           "nowhere.pt does not exist"),
    "folder_as_checkpoint": (["sample", "--checkpoint", "{tmp}", "--device", "cpu"], "is a folder; give the file"),
    "text_checkpoint": (["sample", "--checkpoint", "{tmp}/notes.txt", "--device", "cpu"],
                        "notes.txt is not a readable checkpoint"),
    "guidance_unconditional": (["sample", "--checkpoint", "{unconditional}", "--guidance", "2", "--device", "cpu",
                                "--out", "{tmp}/never.png"], "--guidance needs a class-conditional model"),
    "wrong_class_name": (["sample", "--checkpoint", "{model}", "--class-name", "Unicorn", "--device", "cpu",
                          "--out", "{tmp}/never.png"], "'Unicorn' is not one of this model's classes: Crow, Fox, Owl"),
    "class_name_unconditional": (["sample", "--checkpoint", "{unconditional}", "--class-name", "Fox", "--device",
                                  "cpu", "--out", "{tmp}/never.png"], "--class-name needs a class-conditional model"),
    "resume_without_out_dir": (["train", "--resume"], "--resume needs the --out-dir"),
    "train_without_data_dir": (["train", "--epochs", "1"], "train needs --data-dir"),
    "bad_save_every": ([*TRAIN, "--save-every", "soon"], "argument --save-every: must be a positive whole number, got soon"),
    "no_subcommand": ([], "the following arguments are required: command"),
    "forward_without_data_dir": (["forward"], "the following arguments are required: --data-dir"),
}

ONE_LINE_ERROR = re.compile(r"^(error: |rollNumber_05\.py( \w+)?: error: )")


@pytest.fixture(scope="module")
def places(trained_model, tiny_data, tmp_path_factory):
    """What the commands refer to: {model}, {data}, {tmp} (their working folder), {unconditional}."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "notes.txt").write_text("not a checkpoint\n")
    save_model_file(tmp / "unconditional.pt", ddpm.Config(**tiny_config_values(classes=["Crow", "Fox", "Owl"])))
    return {"model": trained_model, "data": tiny_data, "tmp": tmp, "unconditional": tmp / "unconditional.pt"}


def fill(args, places, name):
    return [arg.format(**places, name=name) for arg in args]


@pytest.fixture(scope="module")
def cli(places):
    """Runs every command in COMMANDS once, each in its own process: {name: (returncode, stdout, stderr)}, plus
    the folder they wrote to."""
    commands = {name: fill(args, places, name) for name, args in COMMANDS.items()}
    return run_cli_many(commands, places["tmp"]), places["tmp"]


def run_main(argv, capsys):
    """ddpm.main(argv) as the script runs it: (exit code, stdout, stderr)."""
    try:
        code = ddpm.main([str(a) for a in argv])
    except SystemExit as stop:  # argparse exits on bad flags and --help
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def ok(result):
    rc, out, err = result
    assert rc == 0, err
    assert "Traceback" not in err
    return out, err


# --- train --------------------------------------------------------------------------------------------------

def test_train_exits_0_and_writes_model(trained_run):
    assert trained_run.rc == 0, trained_run.stderr
    assert "Traceback" not in trained_run.stderr
    assert (trained_run.out_dir / "model.pt").is_file()
    assert "done: 24 steps" in trained_run.stderr


def test_train_stores_the_flags_in_the_model(trained_model):
    cfg = ddpm.config_from_dict(ddpm.load_checkpoint(trained_model)["config"])
    assert (cfg.image_size, cfg.base_channels, cfg.channel_mults, cfg.timesteps) == (16, 8, [1, 2], 50)
    assert cfg.conditional and cfg.classes == ["Crow", "Fox", "Owl"]


def test_train_is_class_conditional_unless_told_otherwise():
    parse = ddpm.build_parser().parse_args
    assert ddpm.Config().conditional and not hasattr(parse(["train", "--data-dir", "d"]), "conditional")
    assert parse(["train", "--data-dir", "d", "--no-conditional"]).conditional is False
    assert parse(["train", "--data-dir", "d", "--conditional"]).conditional is True


def test_a_gpu_run_gets_a_batch_that_fills_it_unless_one_is_given(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(ddpm, "pick_device", lambda name: ddpm.torch.device("cuda"))
    monkeypatch.setattr(ddpm, "train", lambda cfg, *args: asked.append(cfg.batch_size))
    for extra in ([], ["--batch-size", "8"]):
        assert ddpm.main(["train", "--data-dir", "d", "--out-dir", str(tmp_path / "run"), *extra]) == 0
    assert asked == [ddpm.GPU_BATCH_SIZE, 8] and ddpm.GPU_BATCH_SIZE > ddpm.Config().batch_size


# --- sample -------------------------------------------------------------------------------------------------

def grid_size(images, per_row, size=16, padding=2):
    rows = -(-images // per_row)
    return per_row * (size + padding) + padding, rows * (size + padding) + padding


def test_sample_ddim_writes_a_grid_with_a_column_per_class(cli):
    results, tmp = cli
    ok(results["sample_ddim"])
    with Image.open(tmp / "ddim.png") as img:
        assert img.size == grid_size(4, per_row=3)  # 3 classes: a column each


def test_sample_ddpm_of_one_class_writes_a_square_grid(cli):
    results, tmp = cli
    ok(results["sample_ddpm"])
    with Image.open(tmp / "ddpm.png") as img:
        assert img.size == grid_size(4, per_row=2)


# --- forward ------------------------------------------------------------------------------------------------

def test_forward_writes_figure_and_reports_x_T_near_standard_normal(cli):
    results, tmp = cli
    _, err = ok(results["forward"])
    assert (tmp / "forward.png").stat().st_size > 0
    match = re.search(r"x_T has mean (-?[\d.]+) and std ([\d.]+)", err)
    assert match, err
    mean, std = map(float, match.groups())
    assert abs(mean) < 0.15 and abs(std - 1) < 0.15  # 768 pixels after T = 1000 steps


# --- evaluate -----------------------------------------------------------------------------------------------

def test_evaluate_writes_metrics_json(cli):
    results, tmp = cli
    out, _ = ok(results["evaluate"])
    metrics = json.loads((tmp / "metrics.json").read_text())
    assert {"denoising_loss", "denoising_loss_per_t", "memorisation_rate", "novelty", "copy_share",
            "leave_one_out_median", "asked_class_share"} <= metrics.keys()
    assert metrics["novelty"] == pytest.approx(metrics["nearest_distance_median"] / metrics["leave_one_out_median"])
    assert metrics["denoising_loss"] > 0
    assert 0 <= metrics["memorisation_rate"] <= 1
    assert 1 <= metrics["nearest_photos_distinct"] <= metrics["samples"]
    assert metrics["samples"] == 4 and metrics["train_images"] == 12
    assert 0 <= metrics["judged_class_share"] <= 1 and 0 <= metrics["judge_photo_accuracy"] <= 1
    assert len(metrics["judged_class_share_by_class"]) == len(metrics["classes"])
    assert json.loads(out)["denoising_loss"] == metrics["denoising_loss"]  # stdout carries the same numbers


# --- help ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "sample", "forward", "evaluate"])
def test_help_exits_0(command, capsys):
    code, out, _ = run_main([command, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: rollNumber_05.py {command}")


# --- bad input: non-zero exit, one line on stderr, no traceback -------------------------------------------

def assert_one_line_error(code, err, words):
    assert code not in (0, None)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert ONE_LINE_ERROR.match(lines[0]), lines[0]
    assert words in lines[0]


def test_bad_input_in_a_fresh_process_fails_with_one_line_error(cli):
    rc, _, err = cli[0]["missing_checkpoint"]
    assert_one_line_error(rc, err, BAD_INPUT["missing_checkpoint"][1])


@pytest.mark.parametrize("name", BAD_INPUT)
def test_bad_input_fails_with_one_line_error(places, name, capsys):
    args, words = BAD_INPUT[name]
    code, _, err = run_main(fill(args, places, name), capsys)
    assert_one_line_error(code, err, words)


def test_failed_sample_writes_no_image(places, capsys):
    run_main(fill(BAD_INPUT["wrong_class_name"][0], places, "wrong_class_name"), capsys)
    assert not (places["tmp"] / "never.png").exists()


def test_evaluate_refuses_guidance_on_unconditional_model(places, capsys):
    args = ["evaluate", "--checkpoint", "{unconditional}", "--data-dir", "{data}", "--guidance", "2",
            "--num-samples", "2", "--steps", "2", "--device", "cpu", "--out-json",
            "{tmp}/never.json"]
    code, _, err = run_main(fill(args, places, "evaluate_guidance"), capsys)
    assert_one_line_error(code, err, "--guidance needs a class-conditional model")


def test_forward_with_fewer_than_50_timesteps_writes_the_figure(tiny_data, tmp_path, capsys):
    code, _, err = run_main(["forward", "--data-dir", tiny_data, "--image-size", "16", "--timesteps", "20",
                             "--out", tmp_path / "forward.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "forward.png").is_file()
