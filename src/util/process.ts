/**
 * Process-table questions that work under lmbridge's narrow permissions (no `--allow-all`,
 * which Deno wants for reading `/proc/<pid>/*`): is a pid alive, and which processes descend
 * from it. Used to make sure no child outlives lmbridge.
 */
import process from "node:process";

/** Whether `pid` exists (signal 0 probes without signalling; EPERM means it exists). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === "EPERM";
  }
}

/**
 * Children, grandchildren … of `pid`, from `ps` (Linux and macOS). Empty when `ps` is not
 * there or fails.
 *
 * @example
 * for (const child of await descendants(Deno.pid)) Deno.kill(child, "SIGTERM");
 */
export async function descendants(pid: number): Promise<number[]> {
  let text: string;
  try {
    const out = await new Deno.Command("ps", {
      args: ["-A", "-o", "pid=,ppid="],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    if (!out.success) return [];
    text = new TextDecoder().decode(out.stdout);
  } catch {
    return [];
  }
  const children = new Map<number, number[]>();
  for (const line of text.split("\n")) {
    const [child, parent] = line.trim().split(/\s+/).map(Number);
    if (!Number.isInteger(child) || !Number.isInteger(parent)) continue;
    const list = children.get(parent) ?? [];
    list.push(child);
    children.set(parent, list);
  }
  const found: number[] = [];
  const queue = [pid];
  while (queue.length) {
    for (const child of children.get(queue.shift()!) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}
