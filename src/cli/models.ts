/**
 * `lmbridge models`: a table of every model on every backend (id, type, loaded, context,
 * capabilities, backend). Exit code 1 when no backend answers.
 */
import type { App } from "../app.ts";
import type { ModelInfo } from "../backend/types.ts";
import { formatTable, type Terminal } from "./terminal.ts";

export interface ModelsOptions {
  app: App;
  term: Terminal;
  signal?: AbortSignal;
}

/** The table's rows, one per model. */
export function modelRows(models: readonly ModelInfo[]): string[][] {
  return models.map((m) => {
    const caps = [
      m.capabilities.toolUse ? "tools" : "",
      m.capabilities.vision ? "vision" : "",
      m.capabilities.reasoning ? "reasoning" : "",
    ].filter(Boolean).join(",");
    return [
      m.id,
      m.type,
      m.loaded ? "yes" : "no",
      m.contextLength ? String(m.contextLength) : "-",
      caps || "-",
      m.backend,
    ];
  });
}

/** Prints the table to stdout, backend failures to stderr; returns the exit code. */
export async function runModels(options: ModelsOptions): Promise<number> {
  const { app, term } = options;
  const spin = term.spinner("listing models…");
  let listings;
  try {
    listings = await app.catalog.listings({ signal: options.signal, refresh: true });
  } finally {
    spin.stop();
  }
  const failed = listings.filter((l) => l.error);
  for (const l of failed) term.err(`${l.error!.format()}\n`);
  if (failed.length === listings.length) return 1;
  const models = listings.flatMap((l) => l.models);
  if (models.length === 0) {
    term.out("no models (download one with `lms get <model>` or `ollama pull <model>`)\n");
    return 0;
  }
  const header = ["ID", "TYPE", "LOADED", "CONTEXT", "CAPS", "BACKEND"];
  const table = formatTable(header, modelRows(models));
  const [head, ...rest] = table.split("\n");
  term.out(`${term.outStyle.bold(head)}\n${rest.join("\n")}`);
  return 0;
}
