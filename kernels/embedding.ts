/**
 * Embedding gather wrapper: x[r] = embed_tokens[ids[r]], one dispatch per shard of the table.
 *
 * Tests: tests/kernels_test.ts (sharded gather), tests/native_test.ts (CPU).
 *
 * @module
 */
import type { Device, DeviceBuffer } from "./device.ts";
import { launch, type Step } from "./program.ts";
import type { DeviceTensor } from "./tensor.ts";

/** Gathers rows of `table` (V, H) for `rows` token ids into x (rows, H). */
export function embeddingSteps(
  device: Device,
  o: {
    label: string;
    ids: DeviceBuffer;
    table: DeviceTensor;
    x: DeviceBuffer;
    rows: number;
    /** Population batching: token rows per member, and elements between members' tables. */
    members?: { rows: number; tableStride: number };
  },
): Step[] {
  const h = o.table.rowSize;
  if (h % 4 !== 0) throw new Error(`embedding ${o.label}: hidden ${h} must be a multiple of 4`);
  return o.table.shards.map((s, i) =>
    launch(device, {
      label: `${o.label}#${i}`,
      kernel: "embedding",
      consts: {
        R: o.rows,
        H: h,
        ROW_START: s.rowStart,
        ROWS: s.rows,
        RM: o.members?.rows ?? o.rows,
        T_MS4: (o.members?.tableStride ?? 0) / 4,
      },
      buffers: [o.ids, s.buffer, o.x],
      invocations: o.rows * (h / 4),
    })
  );
}
