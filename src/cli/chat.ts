/**
 * `lmbridge chat PROMPT`: streams a local model's answer to stdout as it arrives. On a
 * terminal the reasoning is shown apart (dimmed) and a spinner covers the wait for the first
 * token; piped, stdout carries the answer text only. Failures print `Error [code]: …` on
 * stderr and exit with 1.
 */
import type { App } from "../app.ts";
import type { ChatMessage } from "../backend/types.ts";
import { linkSignals } from "../util/async.ts";
import { toBridgeError } from "../util/errors.ts";
import type { Terminal } from "./terminal.ts";

export interface ChatOptions {
  app: App;
  term: Terminal;
  prompt: string;
  /** A model name to resolve; default: the default model. */
  model?: string;
  /** Aborts the request (Ctrl-C). */
  signal?: AbortSignal;
}

/** Runs one chat request, streaming its answer; returns the exit code. */
export async function runChat(options: ChatOptions): Promise<number> {
  const { app, term } = options;
  const deadlineMs = app.config.requestTimeoutS * 1000;
  // Ctrl-C or the request deadline; the deadline's timer ends with the command.
  using linked = linkSignals([options.signal], { timeoutMs: deadlineMs });
  const signal = linked.signal;
  const showReasoning = term.stdoutIsTerminal;
  const dim = term.outStyle.dim;
  let phase = "waiting" as "waiting" | "reasoning" | "answer";
  let lastChar = "\n";
  const spin = term.spinner("resolving the model…");
  const write = (text: string) => {
    if (!text) return;
    term.out(text);
    lastChar = text.at(-1)!;
  };
  try {
    const binding = await app.router.bind(options.model, { signal });
    spin.update(`waiting for ${binding.model}…`);
    const messages: ChatMessage[] = [{ role: "user", content: options.prompt }];
    const started = performance.now();
    const { value } = await app.router.run(
      binding,
      {
        signal,
        deadline: Date.now() + deadlineMs,
        onStatus: (message) => {
          if (phase === "waiting") spin.update(message);
        },
      },
      (client) =>
        client.chat({ model: binding.model, messages }, {
          signal,
          onReasoning: (delta) => {
            if (!showReasoning) return;
            if (phase === "waiting") spin.stop();
            phase = "reasoning";
            write(dim(delta));
          },
          onText: (delta) => {
            if (phase === "waiting") spin.stop();
            if (phase === "reasoning") write(lastChar === "\n" ? "\n" : "\n\n");
            phase = "answer";
            write(delta);
          },
        }),
    );
    spin.stop();
    app.stats.addUsage(value.usage);
    if (phase !== "answer" && value.text) write(value.text);
    if (lastChar !== "\n") write("\n");
    if (term.stderrIsTerminal) {
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      const model = value.model ?? binding.model;
      const tokens = value.usage.completion_tokens;
      term.err(`${term.errStyle.dim(`${model} · ${tokens} tokens · ${seconds} s`)}\n`);
    }
    return 0;
  } catch (err) {
    spin.stop();
    if (lastChar !== "\n") write("\n");
    // The partial answer is already on stdout; do not repeat it on stderr.
    const error = toBridgeError(err).with({ partialText: undefined });
    term.err(`${error.format()}\n`);
    return 1;
  }
}
