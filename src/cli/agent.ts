/**
 * `lmbridge agent TASK --mcp NAME…`: runs the agent with the named MCP servers (all when
 * none is named), streaming its steps to stderr and its answer to stdout. On a terminal a
 * spinner covers the waits; piped, the output is plain lines.
 */
import type { App } from "../app.ts";
import type { ProgressSink } from "../server/progress.ts";
import type { ToolContext } from "../server/registry.ts";
import type { AgentToolHost } from "../agent/loop.ts";
import { runAgentTool } from "../server/tools_agent.ts";
import { linkSignals } from "../util/async.ts";
import { toBridgeError } from "../util/errors.ts";
import type { Terminal } from "./terminal.ts";

export interface AgentCommandOptions {
  app: App;
  host: AgentToolHost;
  term: Terminal;
  task: string;
  mcp: string[];
  model?: string;
  signal?: AbortSignal;
}

/** Runs one agent task; returns the exit code. */
export async function runAgentCommand(options: AgentCommandOptions): Promise<number> {
  const { app, term } = options;
  const deadlineMs = app.config.requestTimeoutS * 1000;
  // Ctrl-C or the request deadline; the deadline's timer ends with the command.
  using linked = linkSignals([options.signal], { timeoutMs: deadlineMs });
  const signal = linked.signal;
  const dim = term.errStyle.dim;
  let answering = false;
  let lastChar = "\n";
  const spin = term.spinner("starting the agent…");
  const progress: ProgressSink = {
    text(delta) {
      if (!delta) return;
      spin.stop();
      answering = true;
      term.out(delta);
      lastChar = delta.at(-1)!;
    },
    status(message) {
      if (answering && lastChar !== "\n") {
        term.out("\n");
        lastChar = "\n";
      }
      answering = false;
      spin.stop();
      term.err(`${dim(`· ${message}`)}\n`);
      spin.update(message);
    },
    close: () => Promise.resolve(),
  };
  const ctx: ToolContext = {
    requestId: "cli",
    signal,
    deadline: Date.now() + deadlineMs,
    progress,
    log: app.log,
    streaming: true,
  };
  try {
    const out = await runAgentTool(app, options.host, {
      task: options.task,
      mcp_names: options.mcp.length ? options.mcp : undefined,
      model: options.model,
    }, ctx);
    spin.stop();
    const structured = out.structured ?? {};
    // The answer streamed already; print it only when nothing was streamed.
    if (!answering && typeof structured.answer === "string" && structured.answer) {
      term.out(structured.answer);
      lastChar = structured.answer.at(-1)!;
    }
    if (lastChar !== "\n") term.out("\n");
    const summary = out.text.split("\n").at(-1) ?? "";
    term.err(`${dim(summary)}\n`);
    return 0;
  } catch (err) {
    spin.stop();
    if (lastChar !== "\n") term.out("\n");
    const error = toBridgeError(err).with({ partialText: undefined });
    term.err(`${error.format()}\n`);
    // A server name or argument that is wrong is bad usage (exit 2), not a failed run.
    return error.code === "invalid_request" ? 2 : 1;
  }
}
