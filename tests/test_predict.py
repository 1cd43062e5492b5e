"""python -m manualbp.predict CHECKPOINT image.png: pictures of any size, colour and polarity are
brought to MNIST's form and classified by the checkpoint's net; bad images and checkpoints are
one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import FULL_MNIST_ROOT, PROJECT_ROOT, draw_digit, grey, overwrite_first_weight
from PIL import Image

from manualbp.predict import DigitClassifier, PredictError, main, predict, read_grey, to_mnist_form
from manualbp.training import train

# ----------------------------------------------------------------------------------------------
# Digits drawn with Pillow's built-in font: real digit shapes, made without any data set
# ----------------------------------------------------------------------------------------------


def centre_of_mass(field: np.ndarray) -> tuple[float, float]:
    rows, columns = np.indices(field.shape)
    return (rows * field).sum() / field.sum(), (columns * field).sum() / field.sum()


# ----------------------------------------------------------------------------------------------
# MNIST's form
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("digit", [1, 4, 7])
def test_a_digit_is_fitted_in_20x20_and_centred_by_its_centre_of_mass(digit):
    field = to_mnist_form(grey(draw_digit(digit, canvas=(300, 200), size=150, centre=(0.2, 0.7))))
    assert field.shape == (28, 28) and field.dtype == np.float32
    assert field.min() == 0 and field.max() == pytest.approx(1, abs=0.02)
    rows, columns = np.nonzero(field > 0)
    height, width = np.ptp(rows) + 1, np.ptp(columns) + 1
    assert max(height, width) in (20, 21)  # the longer side (21: LANCZOS's fringe)
    assert min(height, width) < 18  # the aspect ratio is kept: digits are taller than wide
    assert np.allclose(centre_of_mass(field), 14, atol=0.5)
    assert field[0].sum() == field[-1].sum() == field[:, 0].sum() == field[:, -1].sum() == 0  # dark border


def test_polarity_colour_size_and_position_do_not_change_the_result(tmp_path):
    reference = to_mnist_form(grey(draw_digit(3)))
    variants = {
        "light on dark": draw_digit(3, ink="white", paper="black"),
        "blue on yellow": draw_digit(3, ink=(20, 40, 200), paper=(250, 240, 120)),
        "grey levels": draw_digit(3, ink=90, paper=200, mode="L"),
        "transparent paper": draw_digit(3, ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA"),
        "4 times larger": draw_digit(3, canvas=(480, 480), size=320, stroke=12),
        "off-centre in a wide image": draw_digit(3, canvas=(400, 130), centre=(0.85, 0.4)),
    }
    for name, image in variants.items():
        path = tmp_path / f"{name}.png"
        image.save(path)
        difference = np.abs(to_mnist_form(read_grey(path)) - reference)
        assert difference.mean() < 0.03, (name, difference.mean())


@pytest.mark.skipif(not FULL_MNIST_ROOT, reason="set MANUALBP_DATA to a folder with full MNIST")
def test_mnist_test_images_are_already_in_mnist_form():
    from manualbp.training.data import MNISTDataModule

    data = MNISTDataModule(root=FULL_MNIST_ROOT, allow_sample=False, download=False)
    data.prepare_data()
    data.setup()
    images = data.images(data.splits["test"][0][:200]).double().numpy()  # (200, 28, 28) in [0, 1]
    differences = [np.abs(to_mnist_form(image) - image).mean() for image in images]
    # the same pixels for most (measured: median 4e-9, 90th percentile 5e-4 of 300 images); a
    # digit whose rounded centre of mass falls the other way moves by one pixel
    assert np.median(differences) < 1e-3 and np.percentile(differences, 90) < 0.01


def test_a_blank_image_is_a_clear_error():
    with pytest.raises(PredictError, match="no digit found"):
        to_mnist_form(np.full((40, 30), 0.8))


# ----------------------------------------------------------------------------------------------
# A checkpoint trained here, on drawn digits, and the command line
# ----------------------------------------------------------------------------------------------


def test_drawn_digits_in_any_form_get_their_labels(digit_checkpoint, tmp_path):
    classifier = DigitClassifier(digit_checkpoint)
    rng = np.random.default_rng(7)
    wrong = []
    for digit in range(10):
        shape = {"size": int(rng.integers(50, 80)), "stroke": int(rng.integers(2, 5)),
                 "angle": float(rng.uniform(-8, 8))}
        variants = {
            "dark on light": draw_digit(digit, **shape),
            "light on dark": draw_digit(digit, ink="white", paper="black", **shape),
            "28x28": draw_digit(digit, canvas=(28, 28), size=20, stroke=1, ink="white", paper="black"),
            "large and colour": draw_digit(digit, canvas=(600, 500), size=350, stroke=14, ink=(200, 0, 0),
                                           paper=(255, 255, 220)),
            "off-centre": draw_digit(digit, canvas=(320, 240), centre=(0.8, 0.25), **shape),
        }
        for name, image in variants.items():
            path = tmp_path / f"{digit}-{name.replace(' ', '_')}.png"
            image.save(path)
            ranked = predict(classifier, path)
            assert len(ranked) == 3 and sum(p for _, p in ranked) <= 1 + 1e-6
            assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
            if ranked[0][0] != str(digit):
                wrong.append((name, digit, ranked))
    assert len(wrong) <= 1, wrong  # of 50 (none here); a small net trained 8 epochs on 1,000 drawn digits


def test_the_command_prints_one_line_per_image_and_errors_for_bad_ones(digit_checkpoint, tmp_path, capsys):
    seven = tmp_path / "seven.png"
    draw_digit(7, canvas=(90, 140), size=90).save(seven)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a PNG")
    blank = tmp_path / "blank.png"
    Image.new("L", (50, 50), 255).save(blank)
    status = main([str(digit_checkpoint), str(seven), str(not_an_image), str(tmp_path / "missing.png"), str(blank)])
    output, errors = capsys.readouterr()
    assert status == 1
    (line,) = output.splitlines()
    assert line.startswith(f"{seven}  7 ") and line.count(" %") == 3
    assert errors.splitlines() == [
        f"error: {not_an_image}: not an image Pillow can read (cannot identify image file '{not_an_image}'); "
        f"give a PNG or JPEG",
        f"error: {tmp_path / 'missing.png'}: no such file",
        f"error: {blank}: no digit found: the image is (almost) one flat grey level",
    ]


def test_a_checkpoint_that_is_not_a_digit_classifier_is_refused(config, tmp_path, small_mnist, capsys):
    xor = train(config("model=xor", "trainer.max_epochs=1", "figures=false"))
    assert main([xor["last_checkpoint"], "x.png"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {xor['last_checkpoint']}: not a digit classifier: model xor was trained on XORDataModule; "
        f"give a checkpoint of python train.py model=mnist"
    )
    plain = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(PredictError, match="weights.pt: not a manualbp training checkpoint .* train.py model=mnist"):
        DigitClassifier(plain)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(PredictError, match=r"garbage.ckpt: not a checkpoint torch can read"):
        DigitClassifier(garbage)
    with pytest.raises(PredictError, match=r"nothing.ckpt: no such checkpoint"):
        DigitClassifier(tmp_path / "nothing.ckpt")


@pytest.mark.parametrize("sidecar", [True, False], ids=["sha256", "crc32"])
def test_a_damaged_checkpoint_is_one_line_and_a_failure(digit_checkpoint, tmp_path, capsys, sidecar):
    damaged = tmp_path / "last.ckpt"
    damaged.write_bytes(digit_checkpoint.read_bytes())
    if sidecar:
        sha256 = digit_checkpoint.with_name(digit_checkpoint.name + ".sha256")
        (tmp_path / "last.ckpt.sha256").write_bytes(sha256.read_bytes())
    overwrite_first_weight(damaged)  # torch.load still reads it: weights of 1e38
    seven = tmp_path / "seven.png"
    draw_digit(7, canvas=(90, 140), size=90).save(seven)
    assert main([str(damaged), str(seven)]) == 1
    output, errors = capsys.readouterr()
    assert output == ""
    reason = ("its SHA-256 is not the one recorded when it was saved (last.ckpt.sha256)" if sidecar
              else "its part archive/data/0 does not match the CRC32 stored in the file")
    assert errors.splitlines() == [
        f"error: checkpoint {damaged} is damaged: {reason}; its bytes changed since"
        f"{' it was saved' if not sidecar else ''}. Train one with: python train.py model=mnist"
    ]


def test_a_fashion_mnist_checkpoint_is_not_a_digit_classifier(config, tmp_path):
    from helpers import write_mnist_files

    write_mnist_files(tmp_path / "data", dataset="FashionMNIST")
    fashion = train(config("model=mnist", "data.dataset=FashionMNIST", f"data.root={tmp_path / 'data'}",
                           "data.val_size=100", "trainer.max_epochs=1", "figures=false", "model.net.sizes=[784,16,10]"))
    with pytest.raises(PredictError, match="not a digit classifier: model mnist was trained on FashionMNIST"):
        DigitClassifier(fashion["last_checkpoint"])


@pytest.mark.slow
def test_python_dash_m_manualbp_predict_without_lightning_or_hydra(digit_checkpoint, tmp_path):
    four = tmp_path / "four.png"
    draw_digit(4, ink="white", paper="black").save(four)
    # as a user runs it; then once more, listing the heavy packages it imported
    check = (
        "import sys, manualbp.predict as p; p.main(sys.argv[1:]); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'hydra', 'pytorch_lightning'}))"
    )
    completed = subprocess.run([sys.executable, "-m", "manualbp.predict", str(digit_checkpoint), str(four)],
                               cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"{four}  4 ")
    light = subprocess.run([sys.executable, "-c", check, str(digit_checkpoint), str(four)], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=300)
    assert light.stdout.splitlines()[-1] == "[]", light.stderr
