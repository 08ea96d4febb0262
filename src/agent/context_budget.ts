/**
 * Keeps an agent conversation inside the model's context: sizes are estimated at four
 * characters per token, and when the conversation is over budget the oldest tool results
 * are shortened first, so the task and the newest evidence survive longest.
 */
import type { ChatMessage } from "../backend/types.ts";

/** Characters per token, a deliberately rough estimate that holds for English and code. */
export const CHARS_PER_TOKEN = 4;
/** Context length assumed when the backend does not report one. */
export const DEFAULT_CONTEXT_TOKENS = 8192;
/** A tool result is never shortened below this many characters. */
const MIN_TOOL_CHARS = 200;
/** Per-message overhead of the chat template, in characters. */
const MESSAGE_OVERHEAD = 16;

/**
 * Characters the messages may take in a round: the context minus the answer's room and the
 * tool definitions. At least a small floor, so a tiny context still gets a try.
 *
 * @example
 * messageBudget({ contextTokens: 8192, maxTokens: 1000, toolsChars: 4000 }); // 8192*4 - 4000 - 4000
 */
export function messageBudget(options: {
  contextTokens?: number;
  maxTokens?: number;
  toolsChars: number;
}): number {
  const tokens = options.contextTokens && options.contextTokens > 0
    ? options.contextTokens
    : DEFAULT_CONTEXT_TOKENS;
  const answerTokens = options.maxTokens && options.maxTokens > 0
    ? Math.min(options.maxTokens, Math.floor(tokens / 2))
    : Math.floor(tokens / 4);
  const chars = (tokens - answerTokens) * CHARS_PER_TOKEN - options.toolsChars;
  return Math.max(chars, 4 * MIN_TOOL_CHARS);
}

/** Estimated size of one message in characters. */
export function messageChars(message: ChatMessage): number {
  let size = MESSAGE_OVERHEAD;
  if (typeof message.content === "string") size += message.content.length;
  else if (Array.isArray(message.content)) {
    for (const part of message.content) size += part.type === "text" ? part.text.length : 1000;
  }
  for (const call of message.tool_calls ?? []) {
    size += call.function.name.length + call.function.arguments.length + MESSAGE_OVERHEAD;
  }
  return size;
}

/**
 * The messages to send: unchanged when they fit `budgetChars`; otherwise a copy whose tool
 * results, oldest first, are shortened (down to a small floor) until they fit or nothing is
 * left to shorten.
 *
 * @example
 * const { messages, shortened } = fitToBudget(conversation, 30_000);
 */
export function fitToBudget(
  messages: readonly ChatMessage[],
  budgetChars: number,
): { messages: ChatMessage[]; shortened: number } {
  let excess = messages.reduce((n, m) => n + messageChars(m), 0) - budgetChars;
  if (excess <= 0) return { messages: [...messages], shortened: 0 };
  let shortened = 0;
  const out = messages.map((message) => {
    if (excess <= 0 || message.role !== "tool" || typeof message.content !== "string") {
      return message;
    }
    const length = message.content.length;
    const keep = Math.max(MIN_TOOL_CHARS, length - excess - 80);
    const dropped = length - keep;
    const note = `\n[shortened: ${dropped} characters dropped to fit the model's context]`;
    if (dropped <= note.length) return message;
    excess -= dropped - note.length;
    shortened++;
    return { ...message, content: message.content.slice(0, keep) + note };
  });
  return { messages: out, shortened };
}
