// The embedded broker as a child process (`python -m pystrands server`) on loopback ports, for
// the tests: started on port 0 (or given ports, to restart it in place), ready once it has
// printed its ports, always stopped when the test process ends.

import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const CLIENT_SOURCE = path.join(REPO, "pystrands", "broker", "pystrands.js");
const READY = /WebSocket on port (\d+) .*backends on [^\s]+:(\d+)/;
const running = new Set();

process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** The Python that runs the broker: $PYSTRANDS_PYTHON (the pytest wrapper sets it), else the repo's .venv. */
export function python() {
  if (process.env.PYSTRANDS_PYTHON) return process.env.PYSTRANDS_PYTHON;
  const venv = path.join(REPO, ".venv", "bin", "python");
  return fs.existsSync(venv) ? venv : "python3";
}

/** Start a broker; resolves to {wsPort, tcpPort, url, stop(signal), output()} once it listens. */
export function startBroker({ wsPort = 0, tcpPort = 0, args = [], timeout = 20000 } = {}) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("PYSTRAND_")));
  const child = spawn(python(), ["-m", "pystrands", "server", "--ws-port", String(wsPort), "--ws-interface", "127.0.0.1",
    "--tcp-port", String(tcpPort), ...args], { cwd: REPO, env: { ...env, PYTHONUNBUFFERED: "1" }, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  let output = "";
  let ready = false;
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => {
    running.delete(child);
    resolve(code ?? signal);
  }));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the broker did not start within ${timeout} ms:\n${output}`));
    }, timeout);
    const read = (chunk) => {
      output += chunk;
      const match = READY.exec(output);
      if (match && !ready) {
        ready = true;
        clearTimeout(timer);
        const broker = {
          wsPort: Number(match[1]),
          tcpPort: Number(match[2]),
          url: `ws://127.0.0.1:${match[1]}`,
          output: () => output,
          exited,
          async stop(signal = "SIGTERM") {
            if (child.exitCode === null && child.signalCode === null) child.kill(signal);
            return exited;
          },
        };
        resolve(broker);
      }
    };
    child.stdout.setEncoding("utf8").on("data", read);
    child.stderr.setEncoding("utf8").on("data", read);
    exited.then((status) => {
      clearTimeout(timer);
      reject(new Error(`the broker exited (${status}) before it listened:\n${output}`));
    });
  });
}
