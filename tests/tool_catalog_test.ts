import assert from "node:assert/strict";
import { ToolCatalog } from "../src/agent/tool_catalog.ts";
import type { DownstreamTool } from "../src/downstream/session_pool.ts";

const tool = (server: string, name: string): DownstreamTool => ({
  server,
  name,
  description: `${name} of ${server}`,
  inputSchema: { $schema: "http://json-schema.org/draft-07/schema#", type: "object" },
});

const fs = [tool("fs", "read_file"), tool("fs", "write_file")];
const memory = [tool("memory", "read_graph"), tool("memory", "read_file")];

Deno.test("one server in play: plain names", () => {
  const catalog = ToolCatalog.build([["fs", fs]]);
  assert.deepEqual(catalog.names(), ["read_file", "write_file"]);
  assert.equal(catalog.resolve("fs__read_file")?.tool, "read_file");
  assert.deepEqual(catalog.definitions()[0], {
    type: "function",
    function: {
      name: "read_file",
      description: "read_file of fs",
      parameters: { type: "object", properties: {} },
    },
  });
});

Deno.test("several servers: server__tool names that map back to server and tool", () => {
  const catalog = ToolCatalog.build([["fs", fs], ["memory", memory]]);
  assert.deepEqual(catalog.names(), [
    "fs__read_file",
    "fs__write_file",
    "memory__read_graph",
    "memory__read_file",
  ]);
  const hit = catalog.resolve("memory__read_file");
  assert.deepEqual([hit?.server, hit?.tool], ["memory", "read_file"]);
  assert.equal(catalog.resolve("memory.read_graph")?.name, "memory__read_graph");
  assert.equal(catalog.resolve("read_graph")?.server, "memory", "a unique tool name resolves");
  assert.equal(catalog.resolve("read_file"), undefined, "an ambiguous tool name does not");
  assert.equal(catalog.resolve("functions.fs__write_file")?.tool, "write_file");
  assert.equal(catalog.resolve("nope"), undefined);
});

Deno.test("allowed_tools accepts tool and server__tool forms and reports unmatched entries", () => {
  const catalog = ToolCatalog.build([["fs", fs], ["memory", memory]], {
    allowed: ["write_file", "memory__read_graph", "typo"],
  });
  assert.deepEqual(catalog.names(), ["fs__write_file", "memory__read_graph"]);
  assert.deepEqual(catalog.unmatched, ["typo"]);
  const single = ToolCatalog.build([["fs", fs], ["memory", memory]], {
    allowed: ["fs__read_file"],
  });
  assert.deepEqual(single.names(), ["read_file"], "one server left in play: plain names");
});

Deno.test("names are made valid function names and kept distinct", () => {
  const catalog = ToolCatalog.build([
    ["my server", [tool("my server", "do.it"), tool("my server", "do it")]],
    ["x", [tool("x", "t".repeat(80))]],
  ]);
  const names = catalog.names();
  assert.deepEqual(names.slice(0, 2), ["my_server__do_it", "my_server__do_it_2"]);
  assert.ok(names.every((n) => /^[A-Za-z0-9_-]{1,64}$/.test(n)), names.join());
  assert.equal(catalog.resolve("my server__do it")?.tool, "do it");
});
