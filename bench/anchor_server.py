"""The plain baseline for serve_load.py: the FastAPI app a user might write in ten minutes.

A dict of N heads of ph's default architecture (plain `PersonalizedHead` modules), one
forward per request, no batching, text encoded by the same hashing encoder ph uses.
`--constant` answers a constant instead: the HTTP ceiling of this stack on this machine.

    python bench/anchor_server.py --port 8100 --heads 100 [--constant]
"""
from __future__ import annotations

import argparse
from typing import List, Union

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from ph.modeling.models import PersonalizedHead
from ph.modeling.processors import HashingEncoder


class PredictRequest(BaseModel):
    uuid: str
    data: Union[str, List[float]]


def create_app(n_heads: int, constant: bool = False) -> FastAPI:
    app = FastAPI()
    torch.manual_seed(0)
    heads = {} if constant else {f"u{i}": PersonalizedHead().eval() for i in range(n_heads)}
    encoder = HashingEncoder(768)

    if constant:
        @app.post("/predict/")
        async def predict_constant(request: PredictRequest):
            return 3
    else:
        @app.post("/predict/")
        def predict(request: PredictRequest):
            x = (encoder.encode([request.data]) if isinstance(request.data, str)
                 else torch.tensor([request.data]))
            with torch.inference_mode():
                return heads[request.uuid](x.unsqueeze(1)).argmax(-1).item()

    @app.get("/healthz")
    async def health():
        return {"status": "ok"}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--heads", type=int, default=100)
    p.add_argument("--constant", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    uvicorn.run(create_app(args.heads, args.constant), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
