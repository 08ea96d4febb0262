/**
 * The MCP servers file is looked for on every call: one created after lmbridge started (here
 * `~/.mcp.json`) is picked up without a restart, and so is its removal.
 */
import assert from "node:assert/strict";
import { startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, startBridge, textOf } from "./support/bridge.ts";

// deno-lint-ignore no-explicit-any
type Structured = Record<string, any>;

Deno.test("a .mcp.json created after start-up is found on the next call", async () => {
  const double = await startDouble();
  const env = bridgeEnv(double.url);
  delete env.MCP_JSON_PATH; // search: ./.mcp.json, ~/.lmstudio/mcp.json, ~/.mcp.json
  const bridge = await startBridge(env);
  try {
    const before = await bridge.call("list_available_mcps");
    assert.match(textOf(before), /No MCP servers file found/);
    const path = `${env.HOME}/.mcp.json`;
    Deno.writeTextFileSync(
      path,
      JSON.stringify({ mcpServers: { later: { command: "true", disabled: true } } }),
    );
    const after = await bridge.call("list_available_mcps");
    const s = after.structuredContent as Structured;
    assert.equal(s.config_path, path);
    assert.deepEqual(s.servers.map((x: Structured) => [x.name, x.status]), [["later", "disabled"]]);
    Deno.removeSync(path);
    const gone = await bridge.call("list_available_mcps");
    assert.match(textOf(gone), /No MCP servers file found/);
  } finally {
    await bridge.close();
    await double.close();
  }
});
