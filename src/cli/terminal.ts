/**
 * Terminal output for the CLI commands: colours and a spinner when the stream is a terminal,
 * plain text when it is piped; `NO_COLOR` (and `TERM=dumb`) turn colours off.
 */

/** A stream the CLI writes to: `Deno.stdout`, `Deno.stderr`, or a fake in tests. */
export interface OutputStream {
  writeSync(bytes: Uint8Array): number;
  isTerminal(): boolean;
}

export interface TerminalOptions {
  /** Default `Deno.stdout`. */
  stdout?: OutputStream;
  /** Default `Deno.stderr`. */
  stderr?: OutputStream;
  /** For `NO_COLOR` and `TERM`. Default: the process environment. */
  env?: Record<string, string | undefined>;
  /** Spinner frame interval. Default 80 ms. */
  frameMs?: number;
}

/** Styles text for one stream; identity functions when colours are off. */
export interface Styles {
  dim(text: string): string;
  bold(text: string): string;
  green(text: string): string;
  red(text: string): string;
  yellow(text: string): string;
}

/** A status line on stderr that animates on a terminal; silent when stderr is piped. */
export interface Spinner {
  /** Replaces the status text. */
  update(message: string): void;
  /** Removes the status line; the spinner may be started again with `update`. */
  stop(): void;
}

const encoder = new TextEncoder();
const FRAMES = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const CLEAR_LINE = "\r\x1b[2K";

function styles(enabled: boolean): Styles {
  const sgr = (open: number, close: number) => (text: string) =>
    enabled ? `\x1b[${open}m${text}\x1b[${close}m` : text;
  return {
    dim: sgr(2, 22),
    bold: sgr(1, 22),
    green: sgr(32, 39),
    red: sgr(31, 39),
    yellow: sgr(33, 39),
  };
}

/**
 * stdout and stderr of a CLI command, each knowing whether it is a terminal.
 *
 * @example
 * const term = new Terminal();
 * const spin = term.spinner("checking backends");
 * // …
 * spin.stop();
 * term.out(`${term.outStyle.green("✓")} backend answered\n`);
 */
export class Terminal {
  /** stdout is a terminal (progress, colours, reasoning shown). */
  readonly stdoutIsTerminal: boolean;
  /** stderr is a terminal (spinner). */
  readonly stderrIsTerminal: boolean;
  /** Styles for text written to stdout. */
  readonly outStyle: Styles;
  /** Styles for text written to stderr. */
  readonly errStyle: Styles;
  readonly #stdout: OutputStream;
  readonly #stderr: OutputStream;
  readonly #frameMs: number;
  #spinnerText?: string;
  #spinnerTimer?: ReturnType<typeof setInterval>;
  #frame = 0;
  #spinnerShown = false;
  #stdoutBroken = false;

  constructor(options: TerminalOptions = {}) {
    this.#stdout = options.stdout ?? Deno.stdout;
    this.#stderr = options.stderr ?? Deno.stderr;
    const env = options.env ?? Deno.env.toObject();
    const dumb = env.TERM === "dumb";
    const noColor = (env.NO_COLOR ?? "") !== "" || dumb;
    this.stdoutIsTerminal = safeIsTerminal(this.#stdout);
    this.stderrIsTerminal = safeIsTerminal(this.#stderr) && !dumb;
    this.outStyle = styles(this.stdoutIsTerminal && !noColor);
    this.errStyle = styles(this.stderrIsTerminal && !noColor);
    this.#frameMs = options.frameMs ?? 80;
  }

  /** Writes to stdout (clearing the spinner line first). False once stdout is closed. */
  out(text: string): boolean {
    if (this.#stdoutBroken) return false;
    this.#hideSpinner();
    try {
      writeAll(this.#stdout, encoder.encode(text));
      return true;
    } catch {
      // The reader went away (`lmbridge chat … | head`): stop writing, quietly.
      this.#stdoutBroken = true;
      return false;
    }
  }

  /** Writes to stderr (clearing the spinner line first). */
  err(text: string): void {
    this.#hideSpinner();
    try {
      writeAll(this.#stderr, encoder.encode(text));
    } catch {
      // stderr closed: nothing sensible left to do.
    }
  }

  /** Starts (or retargets) the one spinner; a no-op when stderr is not a terminal. */
  spinner(message: string): Spinner {
    const update = (text: string) => {
      if (!this.stderrIsTerminal) return;
      this.#spinnerText = text;
      this.#spinnerTimer ??= setInterval(() => this.#drawSpinner(), this.#frameMs);
      this.#drawSpinner();
    };
    update(message);
    return { update, stop: () => this.stopSpinner() };
  }

  /** Removes the spinner, if any. */
  stopSpinner(): void {
    clearInterval(this.#spinnerTimer);
    this.#spinnerTimer = undefined;
    this.#spinnerText = undefined;
    this.#hideSpinner();
  }

  #drawSpinner() {
    if (this.#spinnerText === undefined) return;
    const frame = FRAMES[this.#frame++ % FRAMES.length];
    const text = `${CLEAR_LINE}${this.errStyle.dim(`${frame} ${this.#spinnerText}`)}`;
    try {
      writeAll(this.#stderr, encoder.encode(text));
      this.#spinnerShown = true;
    } catch {
      this.stopSpinner();
    }
  }

  #hideSpinner() {
    if (!this.#spinnerShown) return;
    this.#spinnerShown = false;
    try {
      writeAll(this.#stderr, encoder.encode(CLEAR_LINE));
    } catch {
      // stderr closed.
    }
  }
}

/**
 * Aligns rows into columns (two spaces apart), the header first; the last column is not padded.
 *
 * @example
 * formatTable(["ID", "TYPE"], [["qwen/qwen3-4b", "llm"]]);
 * // "ID             TYPE\nqwen/qwen3-4b  llm\n"
 */
export function formatTable(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => [...(r[i] ?? "")].length)));
  return all.map((row) =>
    row.map((cell, i) =>
      i === row.length - 1 ? cell : cell + " ".repeat(widths[i] - [...cell].length)
    ).join("  ").trimEnd() + "\n"
  ).join("");
}

/**
 * An AbortSignal that aborts on Ctrl-C (SIGINT) or SIGTERM (a second one exits at once);
 * `dispose` removes the listeners.
 *
 * @example
 * using interrupt = onInterrupt();
 * await runChat({ …, signal: interrupt.signal });
 */
export function onInterrupt(
  options: { beforeExit?: () => Promise<void> } = {},
): { signal: AbortSignal; dispose(): void; [Symbol.dispose](): void } {
  const controller = new AbortController();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const stop = () => {
    // A second Ctrl-C does not wait for the request to wind down, only for `beforeExit`
    // (stopping child processes), at most 3 s.
    if (controller.signal.aborted) {
      const exit = () => Deno.exit(1);
      if (!options.beforeExit) exit();
      Promise.race([options.beforeExit?.(), new Promise((r) => setTimeout(r, 3_000))])
        .finally(exit);
      return;
    }
    controller.abort(new DOMException("interrupted", "AbortError"));
  };
  for (const s of signals) Deno.addSignalListener(s, stop);
  const dispose = () => {
    for (const s of signals) Deno.removeSignalListener(s, stop);
  };
  return { signal: controller.signal, dispose, [Symbol.dispose]: dispose };
}

function writeAll(stream: OutputStream, bytes: Uint8Array) {
  let offset = 0;
  while (offset < bytes.length) offset += stream.writeSync(bytes.subarray(offset));
}

function safeIsTerminal(stream: OutputStream): boolean {
  try {
    return stream.isTerminal();
  } catch {
    return false;
  }
}
