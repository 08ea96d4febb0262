/**
 * Secrets never leave lmbridge: the backend API key, the HTTP token, and the environment and
 * headers of MCP servers appear in no log line, no error text and no tool result, even at
 * log level debug and when things fail.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, startBridge, textOf } from "./support/bridge.ts";

const FAULTY = new URL("./support/faulty_mcp_server.ts", import.meta.url).pathname;

Deno.test("secrets appear in no log, error or tool result", async () => {
  const apiKey = "sk-lm-secretkey:VALUE123";
  const httpToken = "http-token-SECRET-456";
  const serverSecret = "mcp-env-SECRET-789";
  const headerSecret = "header-SECRET-000";
  const argSecret = "arg-SECRET-321";
  const urlSecret = "url-SECRET-654";
  const double = await startDouble({ apiKey });
  const dir = Deno.makeTempDirSync({ prefix: "lmbridge-sec-" });
  const configPath = join(dir, ".mcp.json");
  Deno.writeTextFileSync(
    configPath,
    JSON.stringify({
      mcpServers: {
        broken: {
          command: Deno.execPath(),
          args: ["run", "-A", "--no-config", "--no-lock", FAULTY, "exit", "--key=${ARG_SECRET}"],
          env: { API_TOKEN: serverSecret },
        },
        // Prints the value of its --key argument on stderr, as a confused server might.
        echoer: {
          command: "/bin/sh",
          args: ["-c", 'echo "invalid option $1" >&2; exit 3', "sh", "--key=${ARG_SECRET}"],
        },
        remote: {
          type: "http",
          url: "http://127.0.0.1:9/mcp?key=${URL_SECRET}",
          headers: { Authorization: `Bearer ${headerSecret}` },
        },
      },
    }),
  );
  const bridge = await startBridge(bridgeEnv(double.url, {
    LMSTUDIO_API_KEY: apiKey,
    LMBRIDGE_HTTP_TOKEN: httpToken,
    MCP_JSON_PATH: configPath,
    LOG_LEVEL: "debug",
    ARG_SECRET: argSecret,
    URL_SECRET: urlSecret,
  }));
  const outputs: string[] = [];
  try {
    for (
      const [name, args] of [
        ["health_check", {}],
        ["list_models", {}],
        ["bridge_stats", {}],
        ["list_available_mcps", {}],
        ["chat_completion", { prompt: "hi" }],
        ["chat_completion", { prompt: "x", model: "nope-model" }],
        ["autonomous_with_mcp", { task: "use them", mcp_names: ["broken", "remote", "echoer"] }],
        ["autonomous_with_mcp", { task: "use one", mcp_names: ["broken"] }],
      ] as const
    ) {
      const r = await bridge.call(name, args as Record<string, unknown>);
      outputs.push(textOf(r), JSON.stringify(r.structuredContent ?? {}));
    }
    // The key was used: the double received it.
    assert.ok(double.requests.some((q) => q.headers.authorization === `Bearer ${apiKey}`));
  } finally {
    await bridge.close();
    await double.close();
  }
  const everything = outputs.join("\n") + "\n" + bridge.stderr();
  for (
    const secret of [
      apiKey,
      "VALUE123",
      httpToken,
      serverSecret,
      headerSecret,
      argSecret,
      urlSecret,
    ]
  ) {
    assert.ok(!everything.includes(secret), `${secret} leaked`);
  }
  // The failures were reported (so the texts above were really produced), as written.
  assert.match(everything, /MCP server "broken" exited during start-up/);
  assert.match(everything, /invalid option --key=\[redacted\]/, "the echoed secret is blotted out");
  assert.match(everything, /MCP server "remote" at http:\/\/127\.0\.0\.1:9\/mcp:/);
});
