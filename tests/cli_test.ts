/**
 * The command line (SPEC §7): `doctor`, `models`, `chat`, `--help`, `--version` and exit
 * codes, run as a real process (`deno run -A main.ts …`) against the LM Studio double; plus
 * the terminal helpers (plain when piped, NO_COLOR honoured).
 */
import assert from "node:assert/strict";
import { startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, lmbridgeCommand, MAIN } from "./support/bridge.ts";
import { deadUrl, DENO_RUN, MCP_SERVERS } from "./support/helpers.ts";
import { formatTable, type OutputStream, Terminal } from "../src/cli/terminal.ts";

const FAULTY = new URL("./support/faulty_mcp_server.ts", import.meta.url).pathname;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs lmbridge with `args` in a clean environment. */
async function lmbridge(args: string[], env: Record<string, string>): Promise<Run> {
  const out = await lmbridgeCommand([...args], env).output();
  const decoder = new TextDecoder();
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
}

Deno.test("--help and --version print to stdout and exit 0", async () => {
  const env = bridgeEnv(deadUrl());
  const help = await lmbridge(["--help"], env);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /lmbridge doctor/);
  assert.match(help.stdout, /Exit codes: 0 success, 1 failure, 2 bad usage/);
  for (const command of ["serve", "doctor", "models", "chat", "agent"]) {
    const r = await lmbridge([command, "--help"], env);
    assert.equal(r.code, 0, `${command} --help`);
    assert.match(r.stdout, new RegExp(`^lmbridge ${command}`));
  }
  const version = await lmbridge(["--version"], env);
  assert.equal(version.code, 0);
  assert.match(version.stdout, /^lmbridge \d+\.\d+\.\d+\n$/);
});

Deno.test("bad usage and bad configuration exit 2 with one line on stderr", async () => {
  const env = bridgeEnv(deadUrl());
  const flag = await lmbridge(["models", "--no-such-flag"], env);
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /^lmbridge: .*no-such-flag/);
  assert.equal(flag.stdout, "");
  const command = await lmbridge(["frobnicate"], env);
  assert.equal(command.code, 2);
  assert.match(command.stderr, /unknown command "frobnicate"/);
  const noPrompt = await lmbridge(["chat"], env);
  assert.equal(noPrompt.code, 2);
  assert.match(noPrompt.stderr, /chat needs a PROMPT/);
  const extra = await lmbridge(["doctor", "now"], env);
  assert.equal(extra.code, 2);
  const badConfig = await lmbridge(["models"], { ...env, LMBRIDGE_MAX_QUEUE: "-1" });
  assert.equal(badConfig.code, 2);
  assert.match(badConfig.stderr, /LMBRIDGE_MAX_QUEUE/);
});

Deno.test("doctor with the backend up passes every check and exits 0", async () => {
  const double = await startDouble();
  try {
    const r = await lmbridge(["doctor"], bridgeEnv(double.url));
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`✓ backend ${double.url}: lmstudio, answered in \\d+ ms`));
    assert.match(r.stdout, /✓ models on .*: 3 \(1 loaded: qwen\/qwen3-4b\)/);
    assert.match(r.stdout, /✓ default model: qwen\/qwen3-4b/);
    assert.match(r.stdout, /- MCP servers: .*does not exist/);
    assert.match(r.stdout, /all 3 checks passed/);
    assert.doesNotMatch(r.stdout, /✗/);
  } finally {
    await double.close();
  }
});

Deno.test("doctor with the backend down fails with the fix `lms server start` and exits 1", async () => {
  const url = deadUrl();
  const r = await lmbridge(["doctor"], bridgeEnv(url));
  assert.equal(r.code, 1);
  assert.match(r.stdout, new RegExp(`✗ backend ${url}: unreachable`));
  assert.match(r.stdout, /\n {2}fix: start the server with `lms server start`/);
  assert.match(r.stdout, /1 of 1 checks failed/);
});

Deno.test("doctor reports a 401 as an auth failure with the fix: set LMSTUDIO_API_KEY", async () => {
  const double = await startDouble({ apiKey: "sk-lm-right:key" });
  try {
    const wrong = await lmbridge(["doctor"], bridgeEnv(double.url, { LMSTUDIO_API_KEY: "nope" }));
    assert.equal(wrong.code, 1);
    assert.match(wrong.stdout, /✗ backend .*: authentication failed \(401\)/);
    assert.match(wrong.stdout, /fix: set LMSTUDIO_API_KEY/);
    const right = await lmbridge(
      ["doctor"],
      bridgeEnv(double.url, { LMSTUDIO_API_KEY: "sk-lm-right:key" }),
    );
    assert.equal(right.code, 0, right.stdout);
  } finally {
    await double.close();
  }
});

Deno.test("doctor names a configured default model that does not exist", async () => {
  const double = await startDouble();
  try {
    const r = await lmbridge(["doctor"], bridgeEnv(double.url, { DEFAULT_MODEL: "qwen3-4bb" }));
    assert.equal(r.code, 1);
    assert.match(r.stdout, /✗ default model: "qwen3-4bb": /);
    assert.match(r.stdout, /fix: .*qwen\/qwen3-4b/);
  } finally {
    await double.close();
  }
});

Deno.test("doctor starts each MCP server, counts its tools, and prints a fix for one that fails", async () => {
  const double = await startDouble();
  const dir = await Deno.makeTempDir({ prefix: "lmbridge-doctor-" });
  const config = `${dir}/.mcp.json`;
  await Deno.writeTextFile(
    config,
    JSON.stringify({
      mcpServers: {
        good: { command: Deno.execPath(), args: ["run", "-A", FAULTY, "slow"] },
        broken: { command: Deno.execPath(), args: ["run", "-A", FAULTY, "exit"] },
        off: { command: "nothing", disabled: true },
        myself: { command: Deno.execPath(), args: ["run", "-A", MAIN] },
      },
    }),
  );
  try {
    const r = await lmbridge(["doctor"], bridgeEnv(double.url, { MCP_JSON_PATH: config }));
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /✓ MCP server good \(stdio\): 2 tools/);
    assert.match(r.stdout, /✗ MCP server broken \(stdio\): /);
    assert.match(r.stdout, /MCP server broken[^\n]*\n {2}fix: /);
    assert.match(r.stdout, /- MCP server off \(stdio\): disabled/);
    assert.match(r.stdout, /- MCP server myself \(stdio\): this is lmbridge itself/);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await double.close();
  }
});

Deno.test("models prints a table of every model", async () => {
  const double = await startDouble();
  try {
    const r = await lmbridge(["models"], bridgeEnv(double.url));
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split("\n");
    assert.match(lines[0], /^ID\s+TYPE\s+LOADED\s+CONTEXT\s+CAPS\s+BACKEND$/);
    assert.equal(lines.length, 4);
    const row = (id: string) => lines.find((l) => l.startsWith(id + " "))?.split(/\s+/);
    assert.deepEqual(row("qwen/qwen3-4b"), [
      "qwen/qwen3-4b",
      "llm",
      "yes",
      "4096",
      "tools",
      double.url,
    ]);
    assert.deepEqual(row("google/gemma-3-4b")?.slice(1, 5), ["vlm", "no", "4096", "vision"]);
    assert.equal(row("text-embedding-nomic-embed-text-v1.5")?.[1], "embedding");
  } finally {
    await double.close();
  }
});

Deno.test("models exits 1 when no backend answers", async () => {
  const r = await lmbridge(["models"], bridgeEnv(deadUrl()));
  assert.equal(r.code, 1);
  assert.equal(r.stdout, "");
  assert.match(r.stderr, /^Error \[backend_unreachable\]: .*lms server start/m);
});

Deno.test("chat streams the answer to stdout as it arrives", async () => {
  const double = await startDouble({ chunkDelayMs: 250 });
  const answer = "one two three four five six seven eight nine ten";
  double.enqueueReply({ content: answer, reasoning: "secret thoughts" });
  try {
    const child = lmbridgeCommand(["chat", "count", "to", "ten"], bridgeEnv(double.url)).spawn();
    const stderr = new Response(child.stderr).text();
    let stdout = "";
    let firstAt: number | undefined;
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      firstAt ??= Date.now();
      stdout += chunk;
    }
    const endedAt = Date.now();
    const status = await child.status;
    assert.equal(status.code, 0, await stderr);
    await stderr;
    // Reasoning is omitted when piped; the answer comes whole and ends with a newline.
    assert.equal(stdout, answer + "\n");
    assert.ok(endedAt - firstAt! > 1000, "text arrived before the answer was complete");
    const request = double.requests.find((r) => r.path === "/v1/chat/completions");
    const body = request?.body as { messages: { content: string }[] };
    assert.equal(body.messages[0].content, "count to ten");
  } finally {
    await double.close();
  }
});

Deno.test("chat --model picks the model and reads the prompt from stdin with -", async () => {
  const double = await startDouble();
  try {
    const child = lmbridgeCommand(["chat", "-", "--model", "gemma-3-4b"], bridgeEnv(double.url), {
      stdin: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode("from stdin"));
    await writer.close();
    const out = await child.output();
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.equal(stdout, "[google/gemma-3-4b] You said: from stdin\n");
  } finally {
    await double.close();
  }
});

Deno.test("chat to a dead backend prints Error [backend_unreachable] on stderr and exits 1", async () => {
  const r = await lmbridge(["chat", "hello"], bridgeEnv(deadUrl()));
  assert.equal(r.code, 1);
  assert.equal(r.stdout, "");
  assert.match(r.stderr, /^Error \[backend_unreachable\]: /m);
});

Deno.test("chat with an unknown model prints Error [model_not_found] and exits 1", async () => {
  const double = await startDouble();
  try {
    const r = await lmbridge(["chat", "hi", "--model", "qwen3-4bb"], bridgeEnv(double.url));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^Error \[model_not_found\]: .*qwen\/qwen3-4b/m);
  } finally {
    await double.close();
  }
});

// --- terminal helpers ------------------------------------------------------------------------

/** A fake stream that records what is written. */
function fakeStream(terminal: boolean): OutputStream & { text(): string } {
  const chunks: Uint8Array[] = [];
  return {
    writeSync(bytes: Uint8Array) {
      chunks.push(bytes.slice());
      return bytes.length;
    },
    isTerminal: () => terminal,
    text: () => new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c]))),
  };
}

Deno.test("piped output is plain: no colours, no spinner", () => {
  const stdout = fakeStream(false);
  const stderr = fakeStream(false);
  const term = new Terminal({ stdout, stderr, env: {} });
  const spin = term.spinner("waiting");
  term.out(term.outStyle.green("✓") + " fine\n");
  spin.stop();
  assert.equal(stdout.text(), "✓ fine\n");
  assert.equal(stderr.text(), "");
  assert.equal(term.stdoutIsTerminal, false);
});

Deno.test("on a terminal colours are used unless NO_COLOR is set, and the spinner is cleared before output", () => {
  const colour = new Terminal({ stdout: fakeStream(true), stderr: fakeStream(true), env: {} });
  assert.equal(colour.outStyle.red("x"), "\x1b[31mx\x1b[39m");
  const stdout = fakeStream(true);
  const stderr = fakeStream(true);
  const plain = new Terminal({ stdout, stderr, env: { NO_COLOR: "1" } });
  assert.equal(plain.outStyle.red("x"), "x");
  const spin = plain.spinner("loading model");
  assert.match(stderr.text(), /loading model/);
  plain.out("answer\n");
  assert.ok(
    stderr.text().endsWith("\r\x1b[2K"),
    "the spinner line is erased before stdout is written",
  );
  spin.stop();
  assert.equal(stdout.text(), "answer\n");
});

Deno.test("formatTable aligns columns", () => {
  assert.equal(
    formatTable(["ID", "TYPE"], [["qwen/qwen3-4b", "llm"], ["a", "embedding"]]),
    "ID             TYPE\nqwen/qwen3-4b  llm\na              embedding\n",
  );
});

Deno.test("agent runs a task with a real MCP server, streaming its steps", async () => {
  const double = await startDouble();
  const dir = Deno.makeTempDirSync({ prefix: "lmbridge-cli-agent-" });
  const memoryFile = `${dir}/memory.jsonl`;
  Deno.writeTextFileSync(
    `${dir}/.mcp.json`,
    JSON.stringify({
      mcpServers: {
        memory: {
          command: Deno.execPath(),
          args: [...DENO_RUN, MCP_SERVERS.memory],
          env: { MEMORY_FILE_PATH: memoryFile },
        },
      },
    }),
  );
  try {
    const env = bridgeEnv(double.url, { MCP_JSON_PATH: `${dir}/.mcp.json` });
    const task =
      'Remember Ada: CALL create_entities {"entities":[{"name":"Ada","entityType":"person","observations":["first programmer"]}]}';
    const r = await lmbridge(["agent", task, "--mcp", "memory"], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /The tool answered: .*Ada/s);
    assert.match(r.stderr, /calling memory\.create_entities/);
    assert.match(r.stderr, /\[agent: 2 rounds; 1 tool call; model qwen\/qwen3-4b; stop: answer\]/);
    assert.match(Deno.readTextFileSync(memoryFile), /"name":"Ada"/);

    const unknown = await lmbridge(["agent", "x", "--mcp", "nope"], env);
    assert.equal(unknown.code, 2, "an unknown server is bad usage");
    assert.match(unknown.stderr, /^Error \[invalid_request\]: .*nope/m);
    const empty = await lmbridge(["agent"], env);
    assert.equal(empty.code, 2);
  } finally {
    await double.close();
  }
});
