package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
)

var _ gofs.NodeCopyFileRanger = (*Image)(nil)

// CopyFileRange copies between two files of the mount inside the server:
// the bytes go device to device through one aligned buffer instead of
// through the caller (cp uses copy_file_range first).
func (n *Image) CopyFileRange(ctx context.Context, fhIn gofs.FileHandle, offIn uint64,
	out *gofs.Inode, fhOut gofs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	hin, ok1 := fhIn.(*handle)
	hout, ok2 := fhOut.(*handle)
	if !ok1 || !ok2 || flags != 0 {
		return 0, syscall.EOPNOTSUPP // the kernel falls back to copying through the page cache
	}
	size := uint64(n.size.Load())
	if offIn >= size {
		return 0, 0
	}
	length = min(length, size-offIn, 1<<30) // the reply counts in uint32; cp loops
	src := hin.node.acquireDevice()
	if src == nil {
		return 0, hin.node.staleErrno()
	}
	defer src.release()
	buf := getBuf(maxIO)
	defer putBuf(buf)
	var done uint64
	for done < length {
		chunk := (*buf)[:min(uint64(maxIO), length-done)]
		k, err := src.readAt(chunk, int64(offIn+done))
		if err != nil {
			if done > 0 {
				break
			}
			return 0, n.root.toErrno("copy_file_range read", n.name, err)
		}
		if k == 0 {
			break
		}
		w, errno := hout.Write(ctx, chunk[:k], int64(offOut+done))
		done += uint64(w)
		if errno != 0 {
			if done > 0 {
				break
			}
			return 0, errno
		}
		if w < uint32(k) {
			break
		}
	}
	return uint32(done), 0
}
