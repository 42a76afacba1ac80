package fs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/volfs/volfs/meta"
	"github.com/volfs/volfs/snapshot"
	"github.com/volfs/volfs/volmap"
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

// A clone by copy reads and writes cloneBuffer bytes at a time. Into a thin
// destination it leaves out all-zero blocks of the pool's chunk size (the
// driver's Sparser.UnmapUnit): a chunk left out is never allocated and
// reads zeros. Only whole chunks: a pool that does not zero new chunks
// (lvcreate -Zn) would show the disk's old bytes in the rest of a chunk
// that a write allocates, and for such a pool UnmapUnit is 0, so nothing
// is left out.
const cloneBuffer = 4 << 20

// clonePrefix starts the temporary name of a clone by copy under way. No
// file may be created or renamed to such a name, and the mount removes
// the ones a killed server left (RemoveStaleClones): under an exclusive
// mount lock no other server can be copying into them.
const clonePrefix = ".volfs-clone-"

func cloneTemp(name string) bool { return strings.HasPrefix(name, clonePrefix) }

// RemoveStaleClones removes the partial copies that clones by copy of a
// server that was killed left behind; call it before the mount serves.
// Failures are logged: the files stay visible, and rm removes them.
func (r *Root) RemoveStaleClones(ctx context.Context) {
	rm, ok := r.drv.(volmap.Remover)
	if !ok || r.readOnly {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, snapTimeout)
	defer cancel()
	vols, err := r.drv.List(ctx)
	if err != nil {
		r.log.Warn("could not look for partial copies of interrupted clones", slog.Any("err", err))
		return
	}
	for _, v := range vols {
		if !cloneTemp(v.Name) {
			continue
		}
		if err := rm.Remove(ctx, v.Name); err != nil {
			r.log.Error("could not remove the partial copy of an interrupted clone; remove it with rm",
				slog.String("volume", v.Name), slog.Any("err", err))
			continue
		}
		r.log.Warn("removed the partial copy of a clone that a killed server left", slog.String("volume", v.Name))
	}
}

// cloneByCopy makes dst a full copy of the image v, whose volume cannot
// share blocks (a linear LV): a new volume of the same size with attributes
// a, filled from v's device with large sequential I/O in the server. It is
// created under a temporary name (".volfs-clone-…", as rsync copies into
// ".NAME.XXXXXX") and renamed to dst once the copy is flushed, so dst
// never names a partial copy; a failed or interrupted copy (ctx cancelled:
// the client hung up) removes it. progress is told the bytes copied.
//
// Unlike a thin clone the copy is not crash-consistent if v is written
// meanwhile (a running VM): the caller's quiesce flushed volfs's own
// writes, nothing holds new ones back.
func (r *Root) cloneByCopy(ctx context.Context, v volmap.Volume, dst string, a meta.Attrs,
	progress func(done, total int64)) (volmap.Volume, error) {
	cr, ok1 := r.drv.(volmap.Creator)
	rm, ok2 := r.drv.(volmap.Remover)
	rn, ok3 := r.drv.(volmap.Renamer)
	if !ok1 || !ok2 || !ok3 {
		return volmap.Volume{}, notSupported("clone by copy of " + v.Name)
	}
	length := a.Size
	if length < 0 {
		length = v.Size
	}
	rnd := make([]byte, 8)
	_, _ = rand.Read(rnd)
	tmp := clonePrefix + hex.EncodeToString(rnd)
	log := r.log.With(slog.String("volume", v.Name), slog.String("clone", dst), slog.String("temporary", tmp))

	lvmCtx, cancel := context.WithTimeout(ctx, snapTimeout)
	nv, err := cr.Create(lvmCtx, tmp, length, a)
	cancel()
	if err != nil {
		return volmap.Volume{}, fmt.Errorf("clone of %s to %s: create the copy: %w", v.Name, dst, err)
	}
	fail := func(err error) (volmap.Volume, error) {
		// Not cancelled with ctx: the partial copy must go.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapTimeout)
		defer cancel()
		if rerr := rm.Remove(uctx, tmp); rerr != nil {
			log.Error("could not remove the partial copy of a failed clone; remove it with rm", slog.Any("err", rerr))
			return volmap.Volume{}, errors.Join(err, fmt.Errorf("remove the partial copy %s: %w", tmp, rerr))
		}
		log.Info("removed the partial copy of a failed or interrupted clone", slog.Any("err", err))
		return volmap.Volume{}, err
	}
	st, err := r.copyVolume(ctx, v, tmp, nv, length, progress)
	if err != nil {
		return fail(fmt.Errorf("clone of %s to %s: %w", v.Name, dst, err))
	}
	lvmCtx, cancel = context.WithTimeout(ctx, snapTimeout)
	defer cancel()
	// dst was free when the clone began; a file created there since,
	// even one without its volume yet, keeps its name (the rename would
	// take it from under that file): the copy goes.
	r.mu.Lock()
	taken := r.pending[dst] != nil
	r.mu.Unlock()
	if taken {
		return fail(fmt.Errorf("clone of %s to %s: a file %s was created meanwhile: %w", v.Name, dst, dst, volmap.ErrExists))
	}
	if err := rn.Rename(lvmCtx, tmp, dst); err != nil {
		return fail(fmt.Errorf("clone of %s to %s: give the copy its name: %w", v.Name, dst, err))
	}
	log.Info("cloned by copy", slog.Int64("bytes", length), slog.Int64("written", st.Written),
		slog.Int64("zero_skipped", st.Skipped), slog.Bool("thin", nv.Thin))
	out, err := r.drv.Lookup(lvmCtx, dst)
	if err != nil {
		return volmap.Volume{}, fmt.Errorf("clone of %s to %s: %w", v.Name, dst, err)
	}
	return out, nil
}

// copyVolume copies the first length bytes of v's device to the new
// volume nv (named tmp) and flushes them.
func (r *Root) copyVolume(ctx context.Context, v volmap.Volume, tmp string, nv volmap.Volume, length int64,
	progress func(done, total int64)) (snapshot.CopyStats, error) {
	var st snapshot.CopyStats
	in, err := r.drv.Open(ctx, v.Name, os.O_RDONLY|syscall.O_DIRECT|syscall.O_CLOEXEC)
	if err != nil {
		return st, fmt.Errorf("open the source: %w", err)
	}
	defer in.Close()
	out, err := r.drv.Open(ctx, tmp, os.O_WRONLY|syscall.O_DIRECT|syscall.O_CLOEXEC)
	if err != nil {
		return st, fmt.Errorf("open the copy: %w", err)
	}
	defer out.Close()
	// Whole 4 KiB blocks (O_DIRECT); both devices are whole extents.
	n := min((length+4095)/4096*4096, v.Size, nv.Size)
	skip := 0
	if sp, ok := r.drv.(volmap.Sparser); ok && nv.Thin {
		if unit, err := sp.UnmapUnit(ctx, tmp); err == nil && unit > 0 && cloneBuffer%unit == 0 {
			skip = int(unit)
		}
	}
	st, err = snapshot.Copy(ctx, out, in, n, snapshot.CopyOptions{Buffer: cloneBuffer, SkipZero: skip, Progress: progress})
	if err != nil {
		return st, err
	}
	if err := unix.Fdatasync(int(out.Fd())); err != nil {
		return st, fmt.Errorf("flush the copy: %w", err)
	}
	return st, nil
}
