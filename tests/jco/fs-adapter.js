// wasi:filesystem for lockd's component in Node.js: preview2-shim's, with
// one difference. preview2-shim 0.26's preopened directory descriptors
// can only open files: reading the directory's entries ("bad-descriptor")
// and syncing it ("invalid") are refused, and the component does both (it
// reads the lock files at open, and syncs the directory so that renamed
// lock files are durable). So the guest is given, for each preopen, the
// same directory opened read-only through the preopen: a descriptor the
// shim lets list and sync, that resolves paths and guards against leaving
// the directory exactly as the preopen does. The component is unchanged.
import { preopens as shimPreopens, types } from '@bytecodealliance/preview2-shim/filesystem';

export { types };

export const preopens = {
  getDirectories() {
    return shimPreopens.getDirectories().map(([dir, path]) => [
      dir.openAt({ symlinkFollow: true }, '.', { directory: true }, { read: true }),
      path,
    ]);
  },
};
