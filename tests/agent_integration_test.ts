/**
 * The agent end to end: lmbridge over stdio with the real MCP client SDK, the LM Studio double
 * scripted to call tools, and real MCP servers from npm (filesystem, memory) next to faulty
 * ones. Checks that tool calls take effect, faults stay contained, the file hot-reloads,
 * cancellation reaches the downstream server, and no process outlives lmbridge.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type RecordedRequest, startDouble } from "./support/lmstudio_double.ts";
import { bridgeEnv, startBridge, textOf } from "./support/bridge.ts";
import { DENO_RUN, isRunning, MCP_SERVERS } from "./support/helpers.ts";
import { delay } from "../src/util/async.ts";
import type { ChatMessage } from "../src/backend/types.ts";

// deno-lint-ignore no-explicit-any
type Structured = Record<string, any>;

const FAULTY = new URL("./support/faulty_mcp_server.ts", import.meta.url).pathname;
const CHAT = "/v1/chat/completions";

async function waitFor(what: string, check: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await delay(25);
  }
}

Deno.test("the agent uses real MCP servers through lmbridge", async (t) => {
  const dir = Deno.makeTempDirSync({ prefix: "lmbridge_agent_" });
  const files = join(dir, "files");
  Deno.mkdirSync(files);
  const configPath = join(dir, ".mcp.json");
  const eventsPath = join(dir, "faulty.log");
  const faulty = (mode: string) => ({
    command: Deno.execPath(),
    args: [...DENO_RUN, FAULTY, mode],
    env: { FAULTY_MCP_LOG: eventsPath },
  });
  const servers: Record<string, unknown> = {
    filesystem: {
      command: Deno.execPath(),
      args: [...DENO_RUN, MCP_SERVERS.filesystem, files],
    },
    memory: {
      command: Deno.execPath(),
      args: [...DENO_RUN, MCP_SERVERS.memory],
      env: { MEMORY_FILE_PATH: join(dir, "memory.jsonl") },
    },
    everything: {
      command: Deno.execPath(),
      args: [...DENO_RUN, MCP_SERVERS.everything, "stdio"],
    },
    broken: faulty("exit"),
    garbage: faulty("garbage"),
    slow: faulty("slow"),
  };
  const writeConfig = () =>
    Deno.writeTextFileSync(configPath, JSON.stringify({ mcpServers: servers }, null, 2));
  writeConfig();
  const faultyEvents = (event: string) => {
    try {
      return Deno.readTextFileSync(eventsPath).split("\n").filter((l) => l.startsWith(`${event} `));
    } catch {
      return [];
    }
  };

  const double = await startDouble({
    models: [{ id: "qwen/qwen3-4b", contextLength: 32768, toolUse: true }],
  });
  const bridge = await startBridge(
    bridgeEnv(double.url, { MCP_JSON_PATH: configPath, LMBRIDGE_MCP_CALL_TIMEOUT_S: "3" }),
  );
  const seenPids = new Set<number>();
  /** Chat requests the double received for a task containing `tag`, in order. */
  const rounds = (tag: string): RecordedRequest[] =>
    double.requests.filter((r) =>
      r.path === CHAT &&
      (r.body as { messages: ChatMessage[] }).messages.some((m) =>
        m.role === "user" && String(m.content).includes(tag)
      )
    );
  const messagesOf = (r: RecordedRequest) => (r.body as { messages: ChatMessage[] }).messages;
  const toolNames = (r: RecordedRequest) =>
    ((r.body as { tools?: { function: { name: string } }[] }).tools ?? []).map((x) =>
      x.function.name
    );
  const listServers = async () => {
    const r = await bridge.call("list_available_mcps");
    const s = r.structuredContent as Structured;
    for (const server of s.servers) if (server.pid) seenPids.add(server.pid);
    return s;
  };
  const agent = async (
    args: Record<string, unknown>,
    options: { onprogress?: (p: { message?: string }) => void; signal?: AbortSignal } = {},
  ) => {
    const r = await bridge.call("autonomous_with_mcp", args, options);
    await listServers();
    return r;
  };

  try {
    await t.step("both agent tools are listed with schemas", async () => {
      const { tools } = await bridge.client.listTools();
      const auto = tools.find((x: { name: string }) => x.name === "autonomous_with_mcp");
      assert.ok(auto?.outputSchema);
      for (const field of ["task", "mcp_names", "max_rounds", "allowed_tools", "background"]) {
        assert.ok(field in (auto.inputSchema.properties ?? {}), field);
      }
      assert.ok(tools.some((x: { name: string }) => x.name === "list_available_mcps"));
    });

    await t.step("list_available_mcps shows the servers of the file, idle before use", async () => {
      const s = await listServers();
      assert.equal(s.config_path, configPath);
      assert.deepEqual(
        s.servers.map((x: Structured) => [x.name, x.transport, x.status]),
        Object.keys(servers).map((name) => [name, "stdio", "idle"]),
      );
    });

    await t.step("a scripted write_file call really writes the file", async () => {
      const target = join(files, "hello.txt");
      double.enqueueReply({
        content: "",
        toolCalls: [{
          name: "write_file",
          arguments: JSON.stringify({ path: target, content: "written by the agent" }),
        }],
      }, { match: "TASK-FS" });
      double.enqueueReply({ content: "The file is written." }, { match: "TASK-FS" });
      const progress: string[] = [];
      const r = await agent(
        { task: "TASK-FS: write hello.txt", mcp_names: ["filesystem"] },
        { onprogress: (p) => progress.push(p.message ?? "") },
      );
      assert.equal(r.isError, undefined, textOf(r));
      assert.equal(Deno.readTextFileSync(target), "written by the agent");
      const s = r.structuredContent as Structured;
      assert.equal(s.answer, "The file is written.");
      assert.equal(s.model, "qwen/qwen3-4b");
      assert.equal(s.stop_reason, "answer");
      assert.equal(s.rounds, 2);
      assert.deepEqual(
        s.tool_calls.map((c: Structured) => [c.server, c.tool, c.ok, typeof c.ms]),
        [["filesystem", "write_file", true, "number"]],
      );
      assert.ok(s.usage.prompt_tokens > 0);
      assert.match(textOf(r), /^The file is written\.\n\n\[agent: 2 rounds; 1 tool call;/);
      const requests = rounds("TASK-FS");
      assert.ok(toolNames(requests[0]).includes("write_file"), "one server: plain names");
      assert.equal(messagesOf(requests[1]).at(-1)?.role, "tool");
      for (const line of ["round 1", "calling filesystem.write_file", "round 2"]) {
        assert.ok(progress.includes(line), `progress has "${line}": ${progress.join(" | ")}`);
      }
      assert.ok(progress.some((m) => /^filesystem\.write_file ok \(\d+ ms\)$/.test(m)));
    });

    await t.step(
      "with two servers, memory__create_entities then read_graph shows the entity",
      async () => {
        const entity = { name: "lmbridge_agent", entityType: "project", observations: ["tested"] };
        double.enqueueReply({
          content: "",
          toolCalls: [{
            name: "memory__create_entities",
            arguments: JSON.stringify({ entities: [entity] }),
          }],
        }, { match: "TASK-MEM" });
        double.enqueueReply(
          { content: "", toolCalls: [{ name: "memory__read_graph", arguments: "{}" }] },
          { match: "TASK-MEM" },
        );
        double.enqueueReply({ content: "Remembered." }, { match: "TASK-MEM" });
        const r = await agent({ task: "TASK-MEM: remember", mcp_names: ["memory", "filesystem"] });
        assert.equal(r.isError, undefined, textOf(r));
        const s = r.structuredContent as Structured;
        assert.deepEqual(s.tool_calls.map((c: Structured) => [c.tool, c.ok]), [
          ["create_entities", true],
          ["read_graph", true],
        ]);
        const requests = rounds("TASK-MEM");
        assert.equal(requests.length, 3);
        const names = toolNames(requests[0]);
        assert.ok(
          names.includes("memory__create_entities") && names.includes("filesystem__write_file"),
        );
        const graph = String(messagesOf(requests[2]).at(-1)?.content);
        assert.match(graph, /lmbridge_agent/);
        assert.match(Deno.readTextFileSync(join(dir, "memory.jsonl")), /lmbridge_agent/);
      },
    );

    await t.step(
      "server-everything: string numbers are coerced for its number fields; images summarised",
      async () => {
        double.enqueueReply({
          content: "",
          toolCalls: [
            { name: "get-sum", arguments: '{"a": "10", "b": 5}' },
            { name: "get-tiny-image", arguments: "" },
          ],
        }, { match: "TASK-EVERY" });
        double.enqueueReply({ content: "15" }, { match: "TASK-EVERY" });
        const r = await agent({
          task: "TASK-EVERY: add",
          mcp_names: ["everything"],
          allowed_tools: ["get-sum", "everything__get-tiny-image"],
        });
        assert.equal(r.isError, undefined, textOf(r));
        const requests = rounds("TASK-EVERY");
        assert.deepEqual(toolNames(requests[0]), ["get-sum", "get-tiny-image"]);
        const fed = messagesOf(requests[1]).filter((m) => m.role === "tool").map((m) =>
          String(m.content)
        );
        assert.equal(fed[0], "The sum of 10 and 5 is 15.");
        assert.match(fed[1], /\[image: image\/png, \d+ bytes\]/);
        assert.doesNotMatch(fed[1], /iVBOR/, "no base64 goes to the model");
      },
    );

    await t.step(
      "bridge_stats counts the open MCP sessions against the servers in the file",
      async () => {
        const stats = (await bridge.call("bridge_stats")).structuredContent as Structured;
        const sessions = stats.caches.mcp_sessions;
        assert.ok(sessions.size >= 1, "sessions were opened and kept");
        assert.ok(sessions.size <= sessions.max_size);
      },
    );

    await t.step("broken servers are left out and reported while the run goes on", async () => {
      double.enqueueReply(
        { content: "", toolCalls: [{ name: "memory__read_graph", arguments: "{}" }] },
        { match: "TASK-ALL" },
      );
      double.enqueueReply({ content: "Still fine." }, { match: "TASK-ALL" });
      const progress: string[] = [];
      const r = await agent({ task: "TASK-ALL: use everything" }, {
        onprogress: (p) => progress.push(p.message ?? ""),
      });
      assert.equal(r.isError, undefined, textOf(r));
      const s = r.structuredContent as Structured;
      assert.equal(s.answer, "Still fine.");
      assert.deepEqual(
        s.unavailable_servers.map((u: Structured) => u.name).sort(),
        ["broken", "garbage"],
      );
      assert.match(textOf(r), /unavailable: broken, garbage/);
      assert.ok(progress.some((m) => m.startsWith("MCP server broken is unavailable: ")));
      assert.deepEqual(s.tool_calls.map((c: Structured) => [c.server, c.ok]), [["memory", true]]);
      const offered = toolNames(rounds("TASK-ALL")[0]);
      assert.ok(offered.includes("slow__echo") && !offered.some((n) => n.startsWith("broken")));
      const listed = await listServers();
      const status = Object.fromEntries(
        listed.servers.map((x: Structured) => [x.name, x.status]),
      );
      assert.deepEqual(status, {
        filesystem: "connected",
        memory: "connected",
        everything: "connected",
        broken: "failed",
        garbage: "failed",
        slow: "connected",
      });
      assert.ok(listed.servers.find((x: Structured) => x.name === "memory").tools > 0);
    });

    await t.step("invalid JSON arguments are repaired, or returned to the model", async () => {
      const target = join(files, "repaired.txt");
      double.enqueueReply({
        content: "",
        toolCalls: [
          { name: "write_file", arguments: `{path: '${target}', content: 'repaired',}` },
          { name: "write_file", arguments: '{"path": "x" "content": "y"}' },
        ],
      }, { match: "TASK-JSON" });
      const r = await agent({ task: "TASK-JSON", mcp_names: ["filesystem"] });
      assert.equal(r.isError, undefined, textOf(r));
      assert.equal(Deno.readTextFileSync(target), "repaired");
      const s = r.structuredContent as Structured;
      assert.deepEqual(s.tool_calls.map((c: Structured) => c.ok), [true, false]);
      const toolMessages = messagesOf(rounds("TASK-JSON")[1]).filter((m) => m.role === "tool");
      assert.match(
        String(toolMessages[1].content),
        /^Error: the arguments for write_file are not valid JSON/,
      );
    });

    await t.step(
      "an unknown tool gets an error result and the run continues to an answer",
      async () => {
        double.enqueueReply(
          { content: "", toolCalls: [{ name: "format_disk", arguments: "{}" }] },
          { match: "TASK-UNKNOWN" },
        );
        double.enqueueReply({ content: "I could not do that." }, { match: "TASK-UNKNOWN" });
        const r = await agent({ task: "TASK-UNKNOWN", mcp_names: ["slow"] });
        const s = r.structuredContent as Structured;
        assert.equal(s.answer, "I could not do that.");
        assert.equal(s.stop_reason, "answer");
        const fed = messagesOf(rounds("TASK-UNKNOWN")[1]).at(-1)!;
        assert.equal(fed.role, "tool");
        assert.equal(
          fed.content,
          'Error: there is no tool named "format_disk". The tools are: sleep, echo.',
        );
      },
    );

    await t.step(
      "a hanging tool call times out as an error result; the others in its round work",
      async () => {
        double.enqueueReply({
          content: "",
          toolCalls: [
            { name: "sleep", arguments: '{"ms": "20000"}' },
            { name: "echo", arguments: '{"text": "still here"}' },
          ],
        }, { match: "TASK-HANG" });
        double.enqueueReply({ content: "One tool hung." }, { match: "TASK-HANG" });
        const started = Date.now();
        const r = await agent({ task: "TASK-HANG", mcp_names: ["slow"] });
        assert.ok(Date.now() - started < 15_000);
        const s = r.structuredContent as Structured;
        assert.deepEqual(s.tool_calls.map((c: Structured) => [c.tool, c.ok]), [
          ["sleep", false],
          ["echo", true],
        ]);
        assert.match(s.tool_calls[0].error, /timed out after 3s/);
        const fed = messagesOf(rounds("TASK-HANG")[1]).filter((m) => m.role === "tool");
        assert.match(String(fed[0].content), /^Error: .*timed out after 3s/);
        assert.equal(fed[1].content, "still here");
      },
    );

    await t.step("max_rounds stops the run; the last round offers no tools", async () => {
      const again = { content: "", toolCalls: [{ name: "echo", arguments: '{"text": "x"}' }] };
      double.enqueueReply(again, { match: "TASK-ROUNDS" });
      double.enqueueReply({ content: "Out of rounds." }, { match: "TASK-ROUNDS" });
      const r = await agent({ task: "TASK-ROUNDS", mcp_names: ["slow"], max_rounds: 2 });
      const s = r.structuredContent as Structured;
      assert.deepEqual([s.stop_reason, s.rounds, s.answer], ["max_rounds", 2, "Out of rounds."]);
      const requests = rounds("TASK-ROUNDS");
      assert.equal(requests.length, 2);
      assert.ok(toolNames(requests[0]).length > 0);
      assert.equal((requests[1].body as Structured).tools, undefined, "no tools in the last round");
    });

    await t.step(
      "cancelling from the client cancels the slow downstream call quickly",
      async () => {
        double.enqueueReply(
          { content: "", toolCalls: [{ name: "sleep", arguments: '{"ms": 2900}' }] },
          { match: "TASK-CANCEL" },
        );
        const before = faultyEvents("cancelled").length;
        const abort = new AbortController();
        const progress: string[] = [];
        const call = bridge.call("autonomous_with_mcp", {
          task: "TASK-CANCEL",
          mcp_names: ["slow"],
        }, {
          signal: abort.signal,
          onprogress: (p) => {
            progress.push(p.message ?? "");
            if (p.message === "calling slow.sleep") abort.abort();
          },
        }).then(() => assert.fail("the call should have been cancelled"), (err) => err);
        const err = await call;
        assert.match(String(err), /abort|cancel/i);
        const aborted = Date.now();
        await waitFor(
          "the downstream server to see the cancellation",
          () => faultyEvents("cancelled").length > before,
          2_000,
        );
        assert.ok(Date.now() - aborted < 2_000);
        // lmbridge is still fine afterwards.
        const ok = await bridge.call("list_available_mcps");
        assert.equal(ok.isError, undefined);
      },
    );

    await t.step("background: true returns a job id; get_job has the agent's result", async () => {
      double.enqueueReply({ content: "Done in the background." }, { match: "TASK-BG" });
      const r = await bridge.call("autonomous_with_mcp", {
        task: "TASK-BG",
        mcp_names: ["slow"],
        background: true,
      });
      const jobId = (r.structuredContent as Structured).job_id;
      assert.match(jobId, /^job_/);
      const job = await bridge.call("get_job", { job_id: jobId, wait_s: 20 });
      const s = job.structuredContent as Structured;
      assert.equal(s.status, "succeeded", textOf(job));
      assert.equal(s.result.answer, "Done in the background.");
      assert.equal(s.result.stop_reason, "answer");
      const unknown = await bridge.call("autonomous_with_mcp", {
        task: "x",
        mcp_names: ["nope"],
        background: true,
      });
      assert.equal(unknown.isError, true, "unknown servers fail at once, not in the job");
      assert.match(
        textOf(unknown),
        /^Error \[invalid_request\]: mcp_names: no MCP server named "nope"/,
      );
      assert.match(
        textOf(unknown),
        /the usable servers are: filesystem, memory, everything, broken, garbage, slow/,
      );
    });

    await t.step(
      "edits to the file show on the next call (hot reload); a malformed file is reported",
      async () => {
        delete servers.garbage;
        servers.extra = faulty("slow");
        writeConfig();
        const s = await listServers();
        assert.deepEqual(
          s.servers.map((x: Structured) => [x.name, x.status]),
          [
            ["filesystem", "connected"],
            ["memory", "connected"],
            ["everything", "connected"],
            ["broken", "failed"],
            ["slow", "connected"],
            ["extra", "idle"],
          ],
        );
        double.enqueueReply(
          { content: "", toolCalls: [{ name: "echo", arguments: '{"text": "new"}' }] },
          { match: "TASK-RELOAD" },
        );
        const r = await agent({ task: "TASK-RELOAD", mcp_names: ["extra"] });
        assert.deepEqual(
          (r.structuredContent as Structured).tool_calls.map((c: Structured) => c.ok),
          [
            true,
          ],
        );

        Deno.writeTextFileSync(configPath, '{"mcpServers": {');
        const broken = await bridge.call("list_available_mcps");
        assert.equal(broken.isError, undefined);
        const b = broken.structuredContent as Structured;
        assert.match(b.error, /not valid JSON/);
        assert.match(textOf(broken), /malformed/);
        const agentErr = await bridge.call("autonomous_with_mcp", { task: "x" });
        assert.equal(agentErr.isError, true);
        assert.match(
          textOf(agentErr),
          /^Error \[mcp_server_unavailable\]: the MCP servers file is malformed/,
        );
        const chat = await bridge.call("chat_completion", { prompt: "still working?" });
        assert.equal(chat.isError, undefined, "model tools keep working");
        writeConfig();
      },
    );
  } finally {
    for (const line of faultyEvents("start")) seenPids.add(Number(line.split(" ")[1]));
    const bridgePid = bridge.pid;
    const aliveBefore = [...seenPids].filter(isRunning);
    await bridge.close();
    await double.close();
    try {
      await t.step("no process is left behind once lmbridge closes", async () => {
        assert.ok(aliveBefore.length >= 4, `running before close: ${aliveBefore}`);
        await waitFor(
          "every MCP server and lmbridge to end",
          () => [...seenPids, bridgePid ?? 0].every((pid) => !pid || !isRunning(pid)),
        );
      });
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  }
});
