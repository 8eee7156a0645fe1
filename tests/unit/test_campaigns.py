"""The campaign commands' options."""

import pytest

from mefl.cli import build_parser


@pytest.mark.parametrize("text, share", [("0", 0.0), ("0.0625", 0.0625), ("1", 1.0), ("2", 2.0)])
def test_gpus_per_client_takes_a_share_of_one_gpu_or_whole_gpus(text, share):
    args = ["study", "--task", "fmnist", "--out", "x", "--gpus-per-client", text]
    assert build_parser().parse_args(args).gpus_per_client == share


@pytest.mark.parametrize("text", ["-0.5", "1.5"])
def test_gpus_per_client_refuses_what_ray_cannot_schedule(text, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["study", "--task", "fmnist", "--out", "x", "--gpus-per-client", text])
    assert "share of one GPU" in capsys.readouterr().err
