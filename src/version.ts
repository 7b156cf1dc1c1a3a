// podtap's release, for --version, status and the image labels.
export const VERSION = '0.2.0';
