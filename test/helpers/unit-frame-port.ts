// An in-memory FramePort: what a server sends is kept in order, and a test
// hands it frames as if the guest had written them to its TAP.

import type { FramePort } from '../../src/serve/packet.ts';

export class MemoryPort implements FramePort {
  readonly name: string;
  readonly sent: Buffer[] = [];
  closed = false;
  private handler: ((frame: Buffer) => void) | undefined;

  constructor(name = 'tap0') {
    this.name = name;
  }

  send(frame: Buffer): void {
    if (this.closed) throw new Error(`send on ${this.name}: the port is closed`);
    this.sent.push(Buffer.from(frame));
  }

  onFrame(handler: (frame: Buffer) => void): void {
    this.handler = handler;
  }

  close(): void {
    this.closed = true;
  }

  /** Delivers one frame from the guest; throws if no server listens. */
  deliver(frame: Buffer): void {
    if (!this.handler) throw new Error(`nothing listens on ${this.name}`);
    this.handler(frame);
  }

  /** The frames sent since the last call. */
  take(): Buffer[] {
    return this.sent.splice(0);
  }
}
