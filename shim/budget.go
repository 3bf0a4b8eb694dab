package shim

import "sync"

// Budget is the memory gomux may spend on uploads it holds back: staged
// files of every Host and the buffers of uploads still arriving. One Budget
// is shared by a whole gomux, so many targets or users together cannot
// exhaust it; an upload that finds it spent goes to the target as it
// arrives, which is slower but never wrong.
type Budget struct {
	mu        sync.Mutex
	used, max int64
}

// NewBudget allows max bytes in all.
func NewBudget(max int64) *Budget { return &Budget{max: max} }

// Reserve takes n bytes if they are free.
func (b *Budget) Reserve(n int64) bool {
	if b == nil || n <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.max {
		return false
	}
	b.used += n
	return true
}

// Release gives back n bytes taken by Reserve.
func (b *Budget) Release(n int64) {
	if b == nil || n <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used = max(b.used-n, 0)
}

// Used is the number of bytes reserved, for tests and metrics.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
