import assert from "node:assert/strict";
import { join } from "node:path";
import {
  expandVars,
  findMcpConfigPath,
  loadMcpConfig,
  parseMcpConfig,
  type SelfIdentity,
  withoutSecrets,
} from "../src/downstream/mcp_config.ts";
import { BridgeError } from "../src/util/errors.ts";

const notSelf: SelfIdentity = {
  execPath: "/nonexistent/lmbridge",
  mainModulePath: "/nonexistent/lmbridge/main.ts",
  compiled: false,
};

function parse(
  config: unknown,
  env: Record<string, string | undefined> = {},
  self = notSelf,
  path = "/project/.mcp.json",
) {
  return parseMcpConfig(JSON.stringify(config), path, { env, self });
}

function parseError(text: string, path = "/project/.mcp.json"): BridgeError {
  try {
    parseMcpConfig(text, path, { env: {}, self: notSelf });
  } catch (err) {
    assert.ok(err instanceof BridgeError);
    return err;
  }
  assert.fail("expected a BridgeError");
}

Deno.test("stdio, http and sse entries are read as Claude Code writes them", () => {
  const [fs, remote, legacy, lmstudio] = parse({
    mcpServers: {
      fs: { command: "npx", args: ["-y", "server-filesystem", "."], env: { A: "1" } },
      remote: { type: "http", url: "https://mcp.example.com/mcp", headers: { X: "y" } },
      legacy: { type: "sse", url: "http://127.0.0.1:3001/sse" },
      lmstudio: { url: "https://huggingface.co/mcp" },
    },
  });
  assert.deepEqual(
    { ...fs, fingerprint: undefined },
    {
      name: "fs",
      transport: "stdio",
      command: "npx",
      args: ["-y", "server-filesystem", "."],
      env: { A: "1" },
      url: undefined,
      headers: {},
      disabled: false,
      self: false,
      fingerprint: undefined,
      shown: "npx -y server-filesystem .",
      secrets: [],
    },
  );
  assert.equal(remote.transport, "http");
  assert.equal(remote.url, "https://mcp.example.com/mcp");
  assert.deepEqual(remote.headers, { X: "y" });
  assert.equal(legacy.transport, "sse");
  assert.equal(lmstudio.transport, "http", "LM Studio's url without type is Streamable HTTP");
});

Deno.test("disabled entries are kept and marked disabled", () => {
  const [entry] = parse({ mcpServers: { off: { command: "x", disabled: true } } });
  assert.equal(entry.disabled, true);
});

Deno.test("${VAR} and ${VAR:-default} expand in command, args, env, url and headers", () => {
  const env = { BIN: "/opt/bin", TOKEN: "s3cret", HOST: "mcp.local", EMPTY: "" };
  const [stdio, http] = parse({
    mcpServers: {
      a: {
        command: "${BIN}/server",
        args: ["--root", "${ROOT:-/srv/data}", "${EMPTY:-unused}", "${MISSING}"],
        env: { API_KEY: "${TOKEN}", MODE: "${MODE:-fast}" },
      },
      b: {
        type: "http",
        url: "https://${HOST}:${PORT:-8443}/mcp",
        headers: { Authorization: "Bearer ${TOKEN}" },
      },
    },
  }, env);
  assert.equal(stdio.command, "/opt/bin/server");
  assert.deepEqual(stdio.args, ["--root", "/srv/data", "", ""]);
  assert.deepEqual(stdio.env, { API_KEY: "s3cret", MODE: "fast" });
  assert.equal(http.url, "https://mcp.local:8443/mcp");
  assert.deepEqual(http.headers, { Authorization: "Bearer s3cret" });
  // What may be shown is the entry as written; the expanded values are known as secrets.
  assert.equal(stdio.shown, "${BIN}/server --root ${ROOT:-/srv/data} ${EMPTY:-unused} ${MISSING}");
  assert.ok(stdio.secrets.includes("s3cret"));
  assert.ok(stdio.secrets.includes("/opt/bin"), "each expanded value is known");
  assert.equal(http.shown, "https://${HOST}:${PORT:-8443}/mcp");
  assert.ok(http.secrets.includes("Bearer s3cret"));
});

Deno.test("a URL shown in messages has no credentials or query", () => {
  assert.equal(withoutSecrets("https://u:p@h.example/mcp?key=abc"), "https://h.example/mcp");
  assert.equal(withoutSecrets("not a url?token=x"), "not a url");
  assert.equal(
    withoutSecrets("https://actions.example.com/mcp/sk-ak-0123456789abcdef/sse"),
    "https://actions.example.com/mcp/…/sse",
  );
});

Deno.test("expandVars: a set but empty variable stays empty; an unset one without default is empty", () => {
  assert.equal(expandVars("[${A}]", { A: "" }), "[]");
  assert.equal(expandVars("[${A:-d}]", { A: "" }), "[]");
  assert.equal(expandVars("[${A}]", {}), "[]");
  assert.equal(expandVars("${URL:-http://x:1/a}", {}), "http://x:1/a");
  assert.equal(expandVars("$HOME and ${", { HOME: "/h" }), "$HOME and ${");
});

Deno.test("a malformed file is refused naming the file and the problem", () => {
  const bad = parseError("{ not json", "/p/.mcp.json");
  assert.equal(bad.code, "invalid_request");
  assert.match(bad.message, /^\/p\/\.mcp\.json: not valid JSON/);
  assert.match(parseError("{}").message, /\.mcp\.json: no "mcpServers" map/);
  assert.match(parseError('{"mcpServers": []}').message, /"mcpServers" must be an object/);
});

Deno.test("an entry with neither command nor url, or a bad url, is refused naming the entry", () => {
  const none = parseError('{"mcpServers": {"broken": {"args": ["x"]}}}');
  assert.match(none.message, /\/project\/\.mcp\.json: server "broken" needs a "command"/);
  const badUrl = parseError('{"mcpServers": {"web": {"type": "http", "url": "not a url"}}}');
  assert.match(badUrl.message, /server "web": "url" is not a valid URL/);
  const ftp = parseError('{"mcpServers": {"web": {"type": "sse", "url": "ftp://x/sse"}}}');
  assert.match(ftp.message, /server "web": "url" must be http/);
  const noUrl = parseError('{"mcpServers": {"web": {"type": "http", "command": "x"}}}');
  assert.match(noUrl.message, /server "web" has type "http" but no "url"/);
  const type = parseError('{"mcpServers": {"w": {"type": "ws", "url": "http://x"}}}');
  assert.match(type.message, /server "w": unknown type "ws"/);
  const args = parseError('{"mcpServers": {"a": {"command": "x", "args": "-v"}}}');
  assert.match(args.message, /server "a": "args" must be an array of strings/);
  const env = parseError('{"mcpServers": {"a": {"command": "x", "env": {"N": 1}}}}');
  assert.match(env.message, /server "a": "env": "N" must be a string/);
});

Deno.test("the fingerprint changes iff the expanded entry changes", () => {
  const config = {
    mcpServers: {
      a: { command: "srv", args: ["${DIR}"], env: { B: "2", A: "1" } },
      b: { command: "other" },
    },
  };
  const [a1, b1] = parse(config, { DIR: "/x" });
  const [a2, b2] = parse(
    {
      mcpServers: {
        b: { command: "other" },
        a: { ...config.mcpServers.a, env: { A: "1", B: "2" } },
      },
    },
    { DIR: "/x" },
  ).sort((x, y) => x.name.localeCompare(y.name));
  assert.equal(a1.fingerprint, a2.fingerprint, "env key order does not matter");
  assert.equal(b1.fingerprint, b2.fingerprint);
  const [a3] = parse(config, { DIR: "/y" });
  assert.notEqual(a1.fingerprint, a3.fingerprint, "a changed variable changes the entry");
  const [a4] = parse({ mcpServers: { a: { ...config.mcpServers.a, disabled: true } } }, {
    DIR: "/x",
  });
  assert.notEqual(a1.fingerprint, a4.fingerprint);
});

Deno.test("an entry that runs lmbridge's own main.ts is self", () => {
  const repo = Deno.makeTempDirSync();
  try {
    const main = join(repo, "main.ts");
    Deno.writeTextFileSync(main, "");
    Deno.symlinkSync(repo, `${repo}-link`);
    const self: SelfIdentity = { execPath: "/usr/bin/deno", mainModulePath: main, compiled: false };
    const entries = parse(
      {
        mcpServers: {
          absolute: { command: "deno", args: ["run", "-A", main] },
          relative: { command: "deno", args: ["run", "-A", "main.ts"] },
          viaLink: { command: "deno", args: ["run", "-A", `${repo}-link/main.ts`] },
          fileUrl: { command: "deno", args: ["run", "-A", `file://${main}`] },
          expanded: { command: "deno", args: ["run", "-A", "${LMB}/main.ts"] },
          task: { command: "deno", args: ["task", "--cwd", repo, "start"] },
          taskHere: { command: "deno", args: ["task", "start"] },
          otherTask: { command: "deno", args: ["task", "--cwd", repo, "bench"] },
          otherMain: { command: "deno", args: ["run", "-A", "/elsewhere/main.ts"] },
          sameDeno: { command: "/usr/bin/deno", args: ["run", "-A", "npm:server-memory"] },
        },
      },
      { LMB: repo },
      self,
      join(repo, ".mcp.json"),
    );
    const selfNames = entries.filter((e) => e.self).map((e) => e.name);
    assert.deepEqual(selfNames, [
      "absolute",
      "relative",
      "viaLink",
      "fileUrl",
      "expanded",
      "task",
      "taskHere",
    ]);
  } finally {
    Deno.removeSync(`${repo}-link`);
    Deno.removeSync(repo, { recursive: true });
  }
});

Deno.test("a compiled lmbridge is self when the command resolves to its executable", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const exe = join(dir, "lmbridge");
    Deno.writeTextFileSync(exe, "");
    Deno.symlinkSync(exe, join(dir, "lmb-alias"));
    const self: SelfIdentity = { execPath: exe, mainModulePath: "/$bunfs/main.ts", compiled: true };
    const entries = parse(
      {
        mcpServers: {
          direct: { command: exe },
          onPath: { command: "lmbridge", args: ["serve"] },
          alias: { command: "./lmb-alias" },
          other: { command: "node", args: [exe] },
          missing: { command: "lmbridge-nope" },
        },
      },
      { PATH: `/nonexistent:${dir}` },
      self,
      join(dir, ".mcp.json"),
    );
    assert.deepEqual(entries.filter((e) => e.self).map((e) => e.name), [
      "direct",
      "onPath",
      "alias",
    ]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("the search order is ./.mcp.json, ~/.lmstudio/mcp.json, ~/.mcp.json; an explicit path wins", () => {
  const find = (present: string[], explicit?: string) =>
    findMcpConfigPath(explicit, {
      cwd: "/work/proj",
      home: "/home/me",
      exists: (p) => present.includes(p),
    });
  const all = ["/work/proj/.mcp.json", "/home/me/.lmstudio/mcp.json", "/home/me/.mcp.json"];
  assert.equal(find(all), "/work/proj/.mcp.json");
  assert.equal(find(all.slice(1)), "/home/me/.lmstudio/mcp.json");
  assert.equal(find(all.slice(2)), "/home/me/.mcp.json");
  assert.equal(find([]), undefined);
  assert.equal(find(all, "conf/servers.json"), "/work/proj/conf/servers.json");
  assert.equal(find([], "~/my.json"), "/home/me/my.json", "explicit is returned even if missing");
});

Deno.test("loadMcpConfig never throws: missing file, malformed file, no path", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const options = { env: {}, self: notSelf };
    const missing = join(dir, "none.json");
    assert.deepEqual(await loadMcpConfig(missing, options), { path: missing, servers: [] });
    assert.deepEqual(await loadMcpConfig(undefined, options), { path: undefined, servers: [] });
    const bad = join(dir, ".mcp.json");
    Deno.writeTextFileSync(bad, '{"mcpServers": {"x": {}}}');
    const config = await loadMcpConfig(bad, options);
    assert.deepEqual(config.servers, []);
    assert.match(config.error ?? "", /\.mcp\.json: server "x" needs a "command"/);
    Deno.writeTextFileSync(bad, '{"mcpServers": {"x": {"command": "y"}}}');
    assert.equal((await loadMcpConfig(bad, options)).servers[0].command, "y");
    const injected = await loadMcpConfig("/virtual.json", {
      ...options,
      readTextFile: () => Promise.resolve('{"mcpServers": {}}'),
    });
    assert.deepEqual(injected, { path: "/virtual.json", servers: [] });
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
