/** An error of the control plane with a stable, machine-readable code. */
export class StrataError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'StrataError';
    this.code = code;
  }
}
