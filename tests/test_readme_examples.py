"""The README's Python examples run as printed (what a user pastes first), each in a folder
of its own holding what it names: a T5 at path/to/t5, videos in my_videos/. The one change:
``.fit(3000)`` trains 1 step here."""

import re

import numpy as np
import pytest

from ivref import configs, text, video


def _blocks(repo_root) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (repo_root / "README.md").read_text(), re.S)


def _one_step(code: str) -> str:
    assert code.count(".fit(3000)") == 1, code
    return code.replace(".fit(3000)", ".fit(1)")


def _run(code: str) -> dict:
    scope: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README's own code)
    return scope


def test_the_readme_has_the_examples_this_file_runs(repo_root):
    blocks = _blocks(repo_root)
    assert len(blocks) == 3, "a README example was added or removed: run it here too"
    assert "Cascade.from_pretrained()" in blocks[0]
    assert 'path="path/to/t5"' in blocks[1]
    assert '"my_videos/index.csv"' in blocks[2]


@pytest.mark.slow
def test_the_library_tour_runs_with_the_shipped_weights(repo_root):
    scope = _run(_blocks(repo_root)[0])
    assert scope["x_hat"].shape == (2, 3, 8, 16, 16)
    toy = configs.preset("toy").stages[-1]
    assert scope["video"].shape == (1, 3, toy.num_frames, toy.height, toy.width)
    assert float(scope["video"].abs().max()) <= 1.0


@pytest.mark.slow
def test_the_own_configuration_example_trains_with_a_local_t5(repo_root, tmp_path, monkeypatch):
    t5 = text.TinyT5Encoder(configs.TextConfig(encoder="tiny-t5", dim=512, max_length=48))
    t5.model.save_pretrained(tmp_path / "path" / "to" / "t5")  # where the example looks
    t5.tokenizer.save_pretrained(tmp_path / "path" / "to" / "t5")
    monkeypatch.chdir(tmp_path)
    scope = _run(_one_step(_blocks(repo_root)[1]))
    assert scope["base_alone"].stage("base").num_frames == 6
    assert [row["step"] for row in _log(tmp_path / "runs" / "mine")] == [1]
    saved = (tmp_path / "runs" / "mine" / "checkpoints").iterdir()
    assert len(list(saved)) == 1


@pytest.mark.slow
def test_the_own_videos_example_trains_on_a_folder(repo_root, tmp_path, monkeypatch):
    folder = tmp_path / "my_videos"
    folder.mkdir()
    frames = (8 * np.arange(40, dtype=np.uint8))[:, None, None, None]  # 40 frames, 12 fps
    for name in ("a", "b"):
        video.write_video(folder / f"{name}.mp4", np.broadcast_to(frames, (40, 16, 16, 3)), fps=12)
    (folder / "index.csv").write_text("path,caption\na.mp4,a gray fade\nb.mp4,another fade\n")
    monkeypatch.chdir(tmp_path)
    _run(_one_step(_blocks(repo_root)[2]))
    log = _log(tmp_path / "runs" / "mine")
    assert [row["step"] for row in log] == [1] and np.isfinite(log[0]["loss"])


def _log(run):
    from ivref import train

    return train.read_log(run)
