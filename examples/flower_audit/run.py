"""
Run the Flower app in Flower's simulation runtime (Ray backend, one CPU per client) and capture every update::

    python run.py                 # -> captures/        then: art-gifd audit audit.toml
    python run.py --dp            # -> captures-dp/     then: art-gifd audit audit_dp.toml
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flower_audit.client_app import app as client_app
from flower_audit.client_app import dp_app
from flower_audit.server_app import make_app
from flower_audit.task import RUN_CONFIG
from flwr.simulation import run_simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dp", action="store_true", help="client-side fixed clipping, noise added by the server")
    parser.add_argument("--rounds", type=int, default=RUN_CONFIG["num-server-rounds"])
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    captures = here / ("captures-dp" if args.dp else "captures")
    if (captures / "index.json").exists():  # a new run would mix its rounds with the earlier run's
        sys.exit(f"{captures} holds an earlier run's capture: delete it (or move it away) to capture a new run.")
    run_simulation(
        server_app=make_app(captures=str(captures), dp=args.dp, **{"num-server-rounds": args.rounds}),
        client_app=dp_app if args.dp else client_app,
        num_supernodes=RUN_CONFIG["num-clients"],
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    print(f"captures: {captures}")


if __name__ == "__main__":
    main()
