import assert from "node:assert/strict";
import {
  ConfigError,
  loadConfig,
  type LoadConfigOptions,
  normalizeBackendUrl,
  parseHostPort,
} from "../src/config.ts";

/** loadConfig with a config file held in memory (path "/etc/lmbridge.json"). */
function withFile(file: unknown, options: LoadConfigOptions = {}) {
  const text = typeof file === "string" ? file : JSON.stringify(file);
  return loadConfig({
    ...options,
    env: { LMBRIDGE_CONFIG: "/etc/lmbridge.json", ...options.env },
    readTextFile: (path) => {
      assert.equal(path, "/etc/lmbridge.json");
      return text;
    },
  });
}

/** Asserts that `fn` raises a ConfigError naming `setting` and `value` in its message. */
function assertBad(fn: () => unknown, setting: string, value: string) {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
    assert.equal(err.setting, setting);
    assert.ok(err.message.includes(setting), `"${err.message}" names ${setting}`);
    assert.ok(err.message.includes(value), `"${err.message}" names the value ${value}`);
    assert.ok(!err.message.includes("\n"), "one line");
    return true;
  });
}

// --- defaults (SPEC §2) ---

Deno.test("defaults match the SPEC §2 tables", () => {
  const c = loadConfig({ env: {}, home: "/home/u", cwd: "/work/project" });
  assert.deepEqual(c.backends, ["http://localhost:1234"]);
  assert.equal(c.apiKey, undefined);
  assert.equal(c.defaultModel, undefined, "default model: first loaded LLM, decided later");
  assert.equal(c.mcpConfigPath, undefined, "MCP servers file: searched");
  assert.equal(c.logLevel, "info");
  assert.equal(c.http, undefined, "stdio by default");
  assert.equal(c.maxInflightPerModel, undefined, "the instance's parallel, else 4");
  assert.equal(c.maxInflightPerBackend, 16);
  assert.equal(c.maxQueue, 1000);
  assert.equal(c.queueTimeoutS, 120);
  assert.equal(c.rps, undefined, "RPS limit off");
  assert.equal(c.firstByteTimeoutS, 120);
  assert.equal(c.idleTimeoutS, 30);
  assert.equal(c.requestTimeoutS, 600);
  assert.equal(c.cacheTtlS, 30);
  assert.equal(c.stateDir, "/home/u/.local/state/lmbridge");
  assert.equal(c.maxAttempts, 3, "at most 3 attempts by default");
  assert.deepEqual(c.imageRoots, ["/work/project"], "images: the working directory");
  assert.equal(c.allowRemoteImages, false, "remote image URLs refused by default");
});

Deno.test("the state directory follows XDG_STATE_HOME, else ~/.local/state", () => {
  assert.equal(
    loadConfig({ env: { XDG_STATE_HOME: "/xdg/state" }, home: "/home/u" }).stateDir,
    "/xdg/state/lmbridge",
  );
  assert.equal(loadConfig({ env: { HOME: "/home/v" } }).stateDir, "/home/v/.local/state/lmbridge");
  assert.equal(
    loadConfig({ env: { XDG_STATE_HOME: "/xdg", LMBRIDGE_STATE_DIR: "/var/lib/lmb" } }).stateDir,
    "/var/lib/lmb",
  );
});

// --- backends ---

Deno.test("LMSTUDIO_HOST and LMSTUDIO_PORT make the default backend", () => {
  const c = loadConfig({ env: { LMSTUDIO_HOST: "gpu-box", LMSTUDIO_PORT: "4321" } });
  assert.deepEqual(c.backends, ["http://gpu-box:4321"]);
  assert.deepEqual(loadConfig({ env: { LMSTUDIO_HOST: "10.0.0.7" } }).backends, [
    "http://10.0.0.7:1234",
  ]);
  assert.deepEqual(loadConfig({ env: { LMSTUDIO_PORT: "5555" } }).backends, [
    "http://localhost:5555",
  ]);
});

Deno.test("an IPv6 LMSTUDIO_HOST is bracketed in the backend URL", () => {
  assert.deepEqual(loadConfig({ env: { LMSTUDIO_HOST: "::1" } }).backends, ["http://[::1]:1234"]);
  assert.deepEqual(loadConfig({ env: { LMSTUDIO_HOST: "[::1]" } }).backends, [
    "http://[::1]:1234",
  ]);
});

Deno.test("LMBRIDGE_BACKENDS is a comma list; trailing slash and /v1 are stripped", () => {
  const c = loadConfig({
    env: {
      LMBRIDGE_BACKENDS: " http://a:1234/ , https://b.example:8443/v1,http://c:11434/v1/ ,",
      LMSTUDIO_HOST: "ignored",
    },
  });
  assert.deepEqual(c.backends, ["http://a:1234", "https://b.example:8443", "http://c:11434"]);
});

Deno.test("the same backend listed twice is kept once", () => {
  const c = loadConfig({ env: { LMBRIDGE_BACKENDS: "http://a:1234,http://a:1234/v1" } });
  assert.deepEqual(c.backends, ["http://a:1234"]);
});

Deno.test("a backend behind a path prefix keeps the prefix", () => {
  assert.equal(normalizeBackendUrl("https://proxy/llm/v1/", "X"), "https://proxy/llm");
  assert.equal(normalizeBackendUrl("http://h:1234", "X"), "http://h:1234");
});

Deno.test("--backend (repeatable) wins over LMBRIDGE_BACKENDS and the config file", () => {
  const c = withFile({ backends: ["http://file:1"] }, {
    flags: { backend: ["http://flag1:1234/", "http://flag2:1234/v1"] },
    env: { LMBRIDGE_BACKENDS: "http://env:1" },
  });
  assert.deepEqual(c.backends, ["http://flag1:1234", "http://flag2:1234"]);
});

Deno.test("LMBRIDGE_BACKENDS wins over the config file, which wins over LMSTUDIO_HOST", () => {
  assert.deepEqual(
    withFile({ backends: ["http://file:1"] }, { env: { LMBRIDGE_BACKENDS: "http://env:2" } })
      .backends,
    ["http://env:2"],
  );
  assert.deepEqual(
    withFile({ backends: ["http://file:1"] }, { env: { LMSTUDIO_HOST: "host" } }).backends,
    ["http://file:1"],
  );
  assert.deepEqual(withFile({ backends: "http://f1:1,http://f2:2" }).backends, [
    "http://f1:1",
    "http://f2:2",
  ]);
});

// --- precedence: flag > env > config file > default ---

Deno.test("log level: flag > env > config file > default", () => {
  const file = { logLevel: "error" };
  assert.equal(
    withFile(file, { flags: { logLevel: "debug" }, env: { LOG_LEVEL: "warn" } }).logLevel,
    "debug",
  );
  assert.equal(withFile(file, { env: { LOG_LEVEL: "warn" } }).logLevel, "warn");
  assert.equal(withFile(file).logLevel, "error");
  assert.equal(withFile({}).logLevel, "info");
  assert.equal(loadConfig({ env: { LOG_LEVEL: "WARN" } }).logLevel, "warn", "case ignored");
});

Deno.test("default model: --model > DEFAULT_MODEL > config file", () => {
  const file = { defaultModel: "file/model" };
  assert.equal(
    withFile(file, { flags: { model: "flag/model" }, env: { DEFAULT_MODEL: "env/model" } })
      .defaultModel,
    "flag/model",
  );
  assert.equal(withFile(file, { env: { DEFAULT_MODEL: "env/model" } }).defaultModel, "env/model");
  assert.equal(withFile(file).defaultModel, "file/model");
});

Deno.test("MCP servers file: --mcp-config > MCP_JSON_PATH > config file", () => {
  const file = { mcpJsonPath: "/file/mcp.json" };
  assert.equal(
    withFile(file, { flags: { mcpConfig: "/flag/mcp.json" }, env: { MCP_JSON_PATH: "/env.json" } })
      .mcpConfigPath,
    "/flag/mcp.json",
  );
  assert.equal(withFile(file, { env: { MCP_JSON_PATH: "/env.json" } }).mcpConfigPath, "/env.json");
  assert.equal(withFile(file).mcpConfigPath, "/file/mcp.json");
});

Deno.test("--config wins over LMBRIDGE_CONFIG", () => {
  const read: string[] = [];
  const c = loadConfig({
    flags: { config: "/flag.json" },
    env: { LMBRIDGE_CONFIG: "/env.json" },
    readTextFile: (path) => {
      read.push(path);
      return JSON.stringify({ maxQueue: 7 });
    },
  });
  assert.deepEqual(read, ["/flag.json"]);
  assert.equal(c.maxQueue, 7);
});

Deno.test("API key: LMSTUDIO_API_KEY, else LMBRIDGE_API_KEY, else the config file", () => {
  assert.equal(
    withFile({ apiKey: "f" }, { env: { LMSTUDIO_API_KEY: "a", LMBRIDGE_API_KEY: "b" } }).apiKey,
    "a",
  );
  assert.equal(withFile({ apiKey: "f" }, { env: { LMBRIDGE_API_KEY: "b" } }).apiKey, "b");
  assert.equal(withFile({ apiKey: "f" }).apiKey, "f");
});

Deno.test("tunables: env wins over the config file's lower camel case keys", () => {
  const file = {
    maxInflightPerModel: 2,
    maxInflightPerBackend: 8,
    maxQueue: 50,
    queueTimeoutS: 5,
    rps: 10,
    firstByteTimeoutS: 60,
    idleTimeoutS: 15,
    requestTimeoutS: 300,
    cacheTtlS: 3,
    stateDir: "/file/state",
  };
  const fromFile = withFile(file);
  assert.equal(fromFile.maxInflightPerModel, 2);
  assert.equal(fromFile.maxInflightPerBackend, 8);
  assert.equal(fromFile.maxQueue, 50);
  assert.equal(fromFile.queueTimeoutS, 5);
  assert.equal(fromFile.rps, 10);
  assert.equal(fromFile.firstByteTimeoutS, 60);
  assert.equal(fromFile.idleTimeoutS, 15);
  assert.equal(fromFile.requestTimeoutS, 300);
  assert.equal(fromFile.cacheTtlS, 3);
  assert.equal(fromFile.stateDir, "/file/state");

  const fromEnv = withFile(file, {
    env: {
      LMBRIDGE_MAX_INFLIGHT_PER_MODEL: "3",
      LMBRIDGE_MAX_INFLIGHT_PER_BACKEND: "32",
      LMBRIDGE_MAX_QUEUE: "0",
      LMBRIDGE_QUEUE_TIMEOUT_S: "1.5",
      LMBRIDGE_RPS: "2.5",
      LMBRIDGE_FIRST_BYTE_TIMEOUT_S: "240",
      LMBRIDGE_IDLE_TIMEOUT_S: "45",
      LMBRIDGE_REQUEST_TIMEOUT_S: "900",
      LMBRIDGE_CACHE_TTL_S: "0",
      LMBRIDGE_STATE_DIR: "/env/state",
    },
  });
  assert.equal(fromEnv.maxInflightPerModel, 3);
  assert.equal(fromEnv.maxInflightPerBackend, 32);
  assert.equal(fromEnv.maxQueue, 0);
  assert.equal(fromEnv.queueTimeoutS, 1.5);
  assert.equal(fromEnv.rps, 2.5);
  assert.equal(fromEnv.firstByteTimeoutS, 240);
  assert.equal(fromEnv.idleTimeoutS, 45);
  assert.equal(fromEnv.requestTimeoutS, 900);
  assert.equal(fromEnv.cacheTtlS, 0);
  assert.equal(fromEnv.stateDir, "/env/state");
});

Deno.test("the config file may also spell a tunable as its env name in lower camel case", () => {
  const c = withFile({ lmbridgeMaxQueue: 12, lmbridgeRequestTimeoutS: 30, lmstudioPort: 4000 });
  assert.equal(c.maxQueue, 12);
  assert.equal(c.requestTimeoutS, 30);
  assert.deepEqual(c.backends, ["http://localhost:4000"]);
});

Deno.test("the config file can set the LM Studio host and port", () => {
  const c = withFile({ lmstudioHost: "box", lmstudioPort: 1235 });
  assert.deepEqual(c.backends, ["http://box:1235"]);
  assert.deepEqual(
    withFile({ lmstudioHost: "box" }, { env: { LMSTUDIO_HOST: "envbox" } }).backends,
    ["http://envbox:1234"],
  );
});

Deno.test("an empty environment variable counts as unset", () => {
  const c = withFile({ logLevel: "warn", maxQueue: 9 }, {
    env: { LOG_LEVEL: "", LMBRIDGE_MAX_QUEUE: "", LMBRIDGE_BACKENDS: "" },
  });
  assert.equal(c.logLevel, "warn");
  assert.equal(c.maxQueue, 9);
  assert.deepEqual(c.backends, ["http://localhost:1234"]);
});

Deno.test("LMBRIDGE_RPS of 0 means off", () => {
  assert.equal(loadConfig({ env: { LMBRIDGE_RPS: "0" } }).rps, undefined);
});

Deno.test("--http HOST:PORT is parsed; a bare :PORT binds 127.0.0.1", () => {
  assert.deepEqual(loadConfig({ flags: { http: "0.0.0.0:8080" } }).http, {
    host: "0.0.0.0",
    port: 8080,
  });
  assert.deepEqual(parseHostPort(":3000", "--http"), { host: "127.0.0.1", port: 3000 });
  assert.deepEqual(parseHostPort("[::1]:3000", "--http"), { host: "::1", port: 3000 });
  assertBad(() => parseHostPort("localhost", "--http"), "--http", "localhost");
  assertBad(() => parseHostPort("h:70000", "--http"), "--http", "h:70000");
});

// --- bad values: one clear line naming the setting and the value ---

Deno.test("port 0 is refused, naming the setting and the value", () => {
  assertBad(() => loadConfig({ env: { LMSTUDIO_PORT: "0" } }), "LMSTUDIO_PORT", "0");
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_BACKENDS: "http://a:1234,http://b:0" } }),
    "LMBRIDGE_BACKENDS",
    "http://b:0",
  );
  assertBad(() => loadConfig({ flags: { backend: ["http://h:0"] } }), "--backend", "http://h:0");
});

Deno.test("a port that is not a number or out of range is refused", () => {
  assertBad(() => loadConfig({ env: { LMSTUDIO_PORT: "abc" } }), "LMSTUDIO_PORT", "abc");
  assertBad(() => loadConfig({ env: { LMSTUDIO_PORT: "65536" } }), "LMSTUDIO_PORT", "65536");
  assertBad(() => loadConfig({ env: { LMSTUDIO_PORT: "-1" } }), "LMSTUDIO_PORT", "-1");
});

Deno.test("an unparsable backend URL is refused", () => {
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_BACKENDS: "not a url" } }),
    "LMBRIDGE_BACKENDS",
    "not a url",
  );
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_BACKENDS: "localhost:1234" } }),
    "LMBRIDGE_BACKENDS",
    "localhost:1234",
  );
  assertBad(() => loadConfig({ flags: { backend: ["ftp://h:21"] } }), "--backend", "ftp://h:21");
  assertBad(
    () => withFile({ backends: ["http://ok:1", "http//broken"] }),
    "backends (config file)",
    "http//broken",
  );
});

Deno.test("a bad LMSTUDIO_HOST is refused", () => {
  assertBad(
    () => loadConfig({ env: { LMSTUDIO_HOST: "http://box" } }),
    "LMSTUDIO_HOST",
    "http://box",
  );
  assertBad(() => loadConfig({ env: { LMSTUDIO_HOST: "a b" } }), "LMSTUDIO_HOST", "a b");
});

Deno.test("an unknown log level is refused", () => {
  assertBad(() => loadConfig({ env: { LOG_LEVEL: "loud" } }), "LOG_LEVEL", "loud");
  assertBad(
    () => loadConfig({ flags: { logLevel: "verbose" } }),
    "--log-level",
    "verbose",
  );
  assertBad(() => withFile({ logLevel: "trace" }), "logLevel (config file)", "trace");
});

Deno.test("a config file that is not valid JSON is refused, naming the file", () => {
  assertBad(() => withFile("{ maxQueue: 5 "), "LMBRIDGE_CONFIG", "/etc/lmbridge.json");
  assertBad(() => withFile("[1, 2]"), "LMBRIDGE_CONFIG", "/etc/lmbridge.json");
  assertBad(
    () =>
      loadConfig({
        flags: { config: "/bad.json" },
        readTextFile: () => "not json",
      }),
    "--config",
    "/bad.json",
  );
});

Deno.test("a config file that cannot be read is refused, naming the file", () => {
  assertBad(
    () =>
      loadConfig({
        env: { LMBRIDGE_CONFIG: "/missing.json" },
        readTextFile: () => {
          throw new Deno.errors.NotFound("no such file");
        },
      }),
    "LMBRIDGE_CONFIG",
    "/missing.json",
  );
});

Deno.test("a negative cap is refused", () => {
  assertBad(() => loadConfig({ env: { LMBRIDGE_MAX_QUEUE: "-1" } }), "LMBRIDGE_MAX_QUEUE", "-1");
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_MAX_INFLIGHT_PER_MODEL: "-2" } }),
    "LMBRIDGE_MAX_INFLIGHT_PER_MODEL",
    "-2",
  );
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_MAX_INFLIGHT_PER_BACKEND: "0" } }),
    "LMBRIDGE_MAX_INFLIGHT_PER_BACKEND",
    "0",
  );
  assertBad(() => loadConfig({ env: { LMBRIDGE_RPS: "-5" } }), "LMBRIDGE_RPS", "-5");
  assertBad(() => withFile({ maxQueue: -3 }), "maxQueue (config file)", "-3");
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_QUEUE_TIMEOUT_S: "-0.5" } }),
    "LMBRIDGE_QUEUE_TIMEOUT_S",
    "-0.5",
  );
});

Deno.test("a cap that is not a whole number is refused", () => {
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_MAX_INFLIGHT_PER_BACKEND: "2.5" } }),
    "LMBRIDGE_MAX_INFLIGHT_PER_BACKEND",
    "2.5",
  );
});

Deno.test("a value that is not a number is refused", () => {
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_REQUEST_TIMEOUT_S: "ten" } }),
    "LMBRIDGE_REQUEST_TIMEOUT_S",
    "ten",
  );
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_CACHE_TTL_S: "Infinity" } }),
    "LMBRIDGE_CACHE_TTL_S",
    "Infinity",
  );
  assertBad(() => withFile({ idleTimeoutS: "soon" }), "idleTimeoutS (config file)", "soon");
  assertBad(() => withFile({ maxQueue: true }), "maxQueue (config file)", "true");
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_IDLE_TIMEOUT_S: "0" } }),
    "LMBRIDGE_IDLE_TIMEOUT_S",
    "0",
  );
});

Deno.test("a bad boolean is refused", () => {
  assertBad(
    () => loadConfig({ env: { LMBRIDGE_ALLOW_REMOTE_IMAGES: "maybe" } }),
    "LMBRIDGE_ALLOW_REMOTE_IMAGES",
    "maybe",
  );
  assert.equal(
    loadConfig({ env: { LMBRIDGE_ALLOW_REMOTE_IMAGES: "true" } }).allowRemoteImages,
    true,
  );
  assert.equal(withFile({ allowRemoteImages: true }).allowRemoteImages, true);
});

// --- the real entry point ---

Deno.test("a bad env value stops start-up with exit code 2 and one line naming it", async () => {
  const cwd = new URL("..", import.meta.url).pathname;
  const env: Record<string, string> = {};
  for (const name of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "DENO_NO_UPDATE_CHECK"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts"],
    cwd,
    env: { ...env, NO_COLOR: "1", LOG_LEVEL: "loud" },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 2, stderr);
  const lines = stderr.split("\n").filter((l) => l.trim() !== "");
  assert.equal(lines.length, 1, `one line on stderr, got:\n${stderr}`);
  assert.match(lines[0], /LOG_LEVEL/);
  assert.match(lines[0], /loud/);
  assert.equal(new TextDecoder().decode(out.stdout), "", "nothing on stdout");
});

Deno.test("a token with spaces or control characters stops start-up without being printed", () => {
  for (
    const [name, value] of [["LMSTUDIO_API_KEY", "abc\nSECRET"], ["LMBRIDGE_HTTP_TOKEN", "a b"]]
  ) {
    assert.throws(
      () => loadConfig({ env: { [name]: value } }),
      (err: Error) =>
        err instanceof ConfigError && err.message.includes(name) &&
        !err.message.includes("SECRET") && !err.message.includes("a b"),
    );
  }
  assert.equal(loadConfig({ env: { LMSTUDIO_API_KEY: "sk-lm-abc:DEF" } }).apiKey, "sk-lm-abc:DEF");
});
