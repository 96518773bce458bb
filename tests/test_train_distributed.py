"""Two processes on the CPU (gloo): EP estimates averaged with all_reduce keep replicas identical."""
import os
import socket

import torch
import torch.multiprocessing as mp

from explorer.train import TrainConfig, Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replica(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # different seeds per rank: the first broadcast must make the replicas equal anyway
    config = TrainConfig(depth=2, width=2, epochs=1, batch_size=8, limit=64, t_free=8, t_nudge=4,
                         eval_limit=32, final_eval_limit=32, progress=False, seed=rank,
                         out=os.path.join(folder, "ddp"))
    trainer = Trainer(config)
    start = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    events = list(trainer.iterate())
    torch.save({"start": start, "end": trainer.net.state_dict(),
                "batches": sum(e["kind"] == "batch" for e in events),
                "eval": next(e for e in events if e["kind"] == "eval")},
               os.path.join(folder, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_gloo_replicas_hold_identical_weights_after_training(tmp_path):
    mp.spawn(_replica, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["batches"] == r1["batches"] == 4  # 64 images, 2 ranks, batch 8
    for k in r0["end"]:
        assert torch.equal(r0["end"][k], r1["end"][k]), k
        assert not torch.equal(r0["end"][k], r0["start"][k]), f"{k} did not train"
    assert r0["eval"]["n"] == r1["eval"]["n"] == 32  # each rank evaluated half, counts summed
    # only rank 0 writes the checkpoint
    assert (tmp_path / "ddp.json").is_file()
