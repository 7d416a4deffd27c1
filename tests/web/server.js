// The server under test for the browser test: `switchboard serve` on loopback, started on
// free ports the first time and on the same ports again after a SIGKILL, so that the page
// loaded from it reconnects to the address it knows. The pid goes to WEB_PIDFILE, where
// tests/web.sh finds it to stop a server this process could not.

import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";

const START_TIMEOUT_MS = 20_000;

export class Server {
  constructor({ bin, dataDir, secretFile, pidFile, extraArgs = [] }) {
    this.bin = bin;
    this.extraArgs = extraArgs;
    this.dataDir = dataDir;
    this.secretFile = secretFile;
    this.pidFile = pidFile;
    this.wsAddr = "127.0.0.1:0";
    this.httpAddr = "127.0.0.1:0";
    this.child = null;
  }

  get url() {
    return `http://${this.httpAddr}/`;
  }

  /** Starts the server and resolves once it printed the line that says it accepts. */
  async start() {
    const args = ["serve", "--listen", this.wsAddr, "--http-listen", this.httpAddr,
      "--shards", "2", "--data-dir", this.dataDir, "--jwt-secret-file", this.secretFile,
      // The test checks the page, not the server's load shedding: on a busy machine a debug
      // build's tick runs late now and then, and the server would drop a `typing` the test
      // waits for.
      "--shed-ephemeral-lag-ms", "0", ...this.extraArgs];
    const child = spawn(this.bin, args, {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, RUST_LOG: "warn" },
    });
    this.child = child;
    writeFileSync(this.pidFile, String(child.pid));
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    const line = await new Promise((resolve, reject) => {
      let text = "";
      const timer = setTimeout(() => reject(new Error("no listening line within 20 s")), START_TIMEOUT_MS);
      child.stdout.on("data", (chunk) => {
        text += chunk;
        const end = text.indexOf("\n");
        if (end >= 0) {
          clearTimeout(timer);
          resolve(text.slice(0, end));
        }
      });
      this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`the server exited (${code ?? signal}) before listening`));
      });
    });
    const found = /^switchboard listening on ws:\/\/(\S+)\/ws \(http (\S+)\)/.exec(line);
    if (!found) throw new Error(`cannot read the addresses from: ${line}`);
    [, this.wsAddr, this.httpAddr] = found;
  }

  /** SIGKILL, as a crash: resolves once the process is gone (its lock and ports free). */
  async kill() {
    this.child.kill("SIGKILL");
    await this.exited;
  }

  /** SIGTERM, the orderly stop; resolves with its exit status. */
  async stop() {
    if (this.child === null || this.child.exitCode !== null || this.child.signalCode !== null) {
      return null;
    }
    this.child.kill("SIGTERM");
    return this.exited;
  }
}
