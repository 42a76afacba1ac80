// Package loopdir is a volmap driver whose volumes are sparse files in a
// directory, each attached to a loop device: a real block device (the fs
// layer needs BLKGETSIZE64, BLKSSZGET and O_DIRECT) with every optional
// capability of a volume manager (create, remove, rename, replace, resize,
// detach, name checks, space, flush, and zeroing through the Zeroing
// wrapper, which also reports a thin volume's mapping: the holes of its
// image file).
//
// It exists so that volfs's lifecycle code (lazy create, growth and trim,
// rename over a file, remove of an open file, zeroing) runs in-process on
// any Linux host with loop devices, in seconds (go test ./fs/), and so that
// volfs can be tried without LVM. It behaves like a volume manager where
// the fs layer depends on it: sizes are whole extents (4 MiB by default),
// the pool has a fixed capacity (creating or growing past it fails with
// volmap.ErrNoSpace), a volume held open outside this process is not
// removed (volmap.ErrInUse), and without Config.Thin the space a volume
// gains holds stale bytes, as a linear LV's reused extents do, so that a
// caller that exposes bytes it did not write is caught. Tests inject
// failures with Driver.SetFault.
//
// It must never be used to keep data anyone cares about: its state is one
// index file and a directory of sparse files without any crash guarantee
// beyond atomic index writes, and its loop devices are attached per
// process (Close detaches them). It must never touch a file outside its
// directory or a loop device it did not attach.
package loopdir
