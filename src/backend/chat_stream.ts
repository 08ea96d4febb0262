/**
 * Assembles a streamed chat or text completion from its chunks, whatever the server:
 * content, reasoning (`reasoning_content`, `reasoning` or `<think>` tags), tool-call
 * fragments joined by index, usage from whichever chunk holds it, and errors inside chunks.
 */
import type { StreamHandlers, ToolCall, Usage } from "./types.ts";
import { readErrorField, type UpstreamErrorBody } from "./upstream_errors.ts";

const OPEN = "<think>";
const CLOSE = "</think>";

/**
 * Splits `<think>…</think>` out of streamed content, tags possibly cut across chunks.
 *
 * @example
 * const s = new ThinkTagSplitter();
 * s.push("<thi"); s.push("nk>hm</think>Hi"); // → reasoning "hm", text "Hi"
 */
export class ThinkTagSplitter {
  #inThink = false;
  #pending = "";

  /** Feeds content; returns the text and reasoning it makes certain. */
  push(chunk: string): { text: string; reasoning: string } {
    let buf = this.#pending + chunk;
    this.#pending = "";
    let text = "";
    let reasoning = "";
    while (buf.length) {
      const tag = this.#inThink ? CLOSE : OPEN;
      const at = buf.indexOf(tag);
      if (at >= 0) {
        if (this.#inThink) reasoning += buf.slice(0, at);
        else text += buf.slice(0, at);
        buf = buf.slice(at + tag.length);
        this.#inThink = !this.#inThink;
        continue;
      }
      // Keep back a tail that could be the start of the tag.
      let keep = 0;
      for (let n = Math.min(tag.length - 1, buf.length); n > 0; n--) {
        if (tag.startsWith(buf.slice(buf.length - n))) {
          keep = n;
          break;
        }
      }
      const out = buf.slice(0, buf.length - keep);
      if (this.#inThink) reasoning += out;
      else text += out;
      this.#pending = buf.slice(buf.length - keep);
      buf = "";
    }
    return { text, reasoning };
  }

  /** End of stream: whatever was held back. */
  flush(): { text: string; reasoning: string } {
    const rest = this.#pending;
    this.#pending = "";
    return this.#inThink ? { text: "", reasoning: rest } : { text: rest, reasoning: "" };
  }
}

interface PartialCall {
  id: string;
  name: string;
  arguments: string;
}

/** Collects the chunks of one streamed generation. */
export class CompletionAccumulator {
  text = "";
  reasoning = "";
  finishReason = "";
  model?: string;
  usage?: Usage;
  error?: UpstreamErrorBody;
  readonly #calls = new Map<number, PartialCall>();
  readonly #think = new ThinkTagSplitter();
  readonly #handlers: StreamHandlers;

  constructor(handlers: StreamHandlers = {}) {
    this.#handlers = handlers;
  }

  /** True once any answer text or reasoning reached the caller. */
  get delivered(): boolean {
    return this.text.length > 0 || this.reasoning.length > 0;
  }

  /** Feeds one parsed `data:` JSON chunk. Returns false when it carried an error. */
  push(chunk: unknown): boolean {
    const err = readErrorField(chunk);
    if (err) {
      this.error = err;
      return false;
    }
    if (typeof chunk !== "object" || chunk === null) return true;
    const c = chunk as Record<string, unknown>;
    if (typeof c.model === "string" && c.model) this.model = c.model;
    const usage = c.usage as Record<string, unknown> | undefined | null;
    if (usage && typeof usage === "object") {
      this.usage = {
        prompt_tokens: Number(usage.prompt_tokens ?? 0) || 0,
        completion_tokens: Number(usage.completion_tokens ?? 0) || 0,
      };
    }
    const choices = Array.isArray(c.choices) ? c.choices : [];
    const choice = choices[0] as Record<string, unknown> | undefined;
    if (!choice) return true;
    if (typeof choice.finish_reason === "string" && choice.finish_reason) {
      this.finishReason = choice.finish_reason;
    }
    // Chat chunks carry `delta`, non-streamed bodies `message`, text completions `text`.
    const delta = (choice.delta ?? choice.message) as Record<string, unknown> | undefined;
    if (typeof choice.text === "string") this.#addContent(choice.text);
    if (!delta || typeof delta !== "object") return true;
    const reasoning = delta.reasoning_content ?? delta.reasoning;
    if (typeof reasoning === "string" && reasoning) this.#addReasoning(reasoning);
    if (typeof delta.content === "string" && delta.content) this.#addContent(delta.content);
    if (Array.isArray(delta.tool_calls)) {
      delta.tool_calls.forEach((tc: Record<string, unknown>, i: number) =>
        this.#addToolCall(tc, i)
      );
    }
    return true;
  }

  /** Ends the stream; returns the joined tool calls. */
  finish(): ToolCall[] {
    const rest = this.#think.flush();
    if (rest.reasoning) this.#addReasoning(rest.reasoning);
    if (rest.text) this.#emitText(rest.text);
    return [...this.#calls.entries()].sort((a, b) => a[0] - b[0]).map(([index, c]) => ({
      id: c.id || `call_${index}`,
      type: "function" as const,
      function: { name: c.name, arguments: c.arguments },
    }));
  }

  #addContent(content: string) {
    const { text, reasoning } = this.#think.push(content);
    if (reasoning) this.#addReasoning(reasoning);
    if (text) this.#emitText(text);
  }

  #emitText(text: string) {
    this.text += text;
    this.#handlers.onText?.(text);
  }

  #addReasoning(text: string) {
    this.reasoning += text;
    this.#handlers.onReasoning?.(text);
  }

  #addToolCall(tc: Record<string, unknown>, position: number) {
    const index = typeof tc.index === "number" ? tc.index : position;
    const fn = (tc.function ?? {}) as Record<string, unknown>;
    let call = this.#calls.get(index);
    if (!call) {
      call = { id: "", name: "", arguments: "" };
      this.#calls.set(index, call);
    }
    if (typeof tc.id === "string" && tc.id && !call.id) call.id = tc.id;
    // An empty name on a later fragment is not a new call (old LM Studio versions).
    if (typeof fn.name === "string" && fn.name && !call.name) {
      call.name = fn.name;
      this.#handlers.onToolCall?.(index, fn.name);
    }
    if (typeof fn.arguments === "string") call.arguments += fn.arguments;
    else if (fn.arguments && typeof fn.arguments === "object") {
      call.arguments += JSON.stringify(fn.arguments);
    }
  }
}
