/* The thread pool native steps share their work on.

   A job is `tasks` calls fn(data, i), i = 0 .. tasks-1, in any order and on any thread. The
   thread that runs a job (the caller) publishes it and then takes tasks itself, one at a time,
   like every worker; it waits only for tasks another thread has already started.

   Why not OpenMP's fork-join: a region there ends in a barrier that waits for every thread of
   the team, and each thread has its share fixed in advance. On a machine shared with other
   processes a thread is often not running; the region then stalls for a scheduler time slice,
   dozens of times per step. Here a worker that is not running simply takes no task.

   A machine shared with other processes preempts each of our threads for time slices of
   milliseconds, and a job cannot end while a preempted thread holds one of its tasks. While every
   CPU we run on is busy with other work too (`every_cpu_busy`), each job also wakes `spares` more
   threads, which take tasks like the workers: a preempted thread's work goes to whichever thread
   runs, and our threads keep a share of the CPUs their waits would otherwise leave to the other
   processes. On an idle machine, and beside one busy process, the spares sleep and the pool is
   what it was: a thread per CPU.

   A job started while another runs (a second Python thread, or a task that starts a job) runs
   on its caller alone. The pool survives fork(): the child has no workers, so its callers take
   every task themselves.

   When the pool has a thread for every CPU the process may use, each worker keeps to a CPU of its
   own other than the caller's (`follow_caller`). Left to the scheduler, a worker that wakes the
   caller draws it onto its own CPU when the caller's is shared with another process: both then
   take turns on one CPU while another process has the other to itself (a whole CPU lost, where
   sharing one costs half of one). The caller, the user's thread, is never pinned: the workers
   move away from wherever it runs.

   Pinned, a worker cannot leave a CPU it shares with another process: preempted there while it
   holds a task, it would keep the caller waiting for a time slice beside a CPU the caller leaves
   idle. So a caller about to sleep for a worker's task that has taken twice as long as its own tasks
   did moves that worker onto its own CPU (`pull_stragglers`); the worker moves back when it has no
   task left. Whatever the machine's state: how often a thread is preempted does not tell a short
   preemption from a long one (a worker beside one busy process is preempted about as often as the
   kernel's own threads preempt it on an idle machine, but each time for milliseconds), and a late
   task is itself the sign. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define MAX_WORKERS 255
#define MAX_TASKS (1u << 30)
/* After a thread of the pool was preempted often (other processes want its core), every thread
   spins only `contended_spin_ns` before it sleeps, for a while (below): on an oversubscribed machine a
   spinning thread burns the time slice that the thread it waits for (or the other process)
   needs, and a sleeping one is woken with priority when its work arrives. Every thread, because
   the preempted one is often the caller, sharing a core with another process while a worker
   spins on the other core: with the worker asleep instead, the scheduler moves the caller to the
   idle core. "Often" is CONTENDED_PREEMPTIONS within CONTENDED_WINDOW_NS: an idle machine preempts
   a busy thread now and then too (kernel threads, timers), and workers that sleep after every job
   miss short jobs, whose callers then run every task alone.
   A thread whose last tasks were short (`short_task_ns` each at most: the many small kernels of a
   recurrent step) spins that long even then: the tasks it waits for end, and the next job comes,
   within about one such task, sooner than a futex wake brings a sleeping thread back on a CPU it
   shares with another process. */
#define CONTENDED_FOR_NS 200000000
/* ... at most: a mark (`contended`, `cpu_busy`) holds CONTENDED_MIN_NS after the last
   sign of contention when contention comes alone, and twice as long as the last time when it comes
   back within CONTENDED_FOR_NS of a mark's end (`mark`). A burst (a daemon waking, another
   process's threads spinning for a few milliseconds) then costs a short spell, where each one held
   the marks for 0.2 s: a spare running beside a single busy process, workers sleeping after every
   job. Sustained load, whose marks lapse while our threads sleep and come back when they spin
   again, holds them for CONTENDED_FOR_NS again after a few such rounds. */
#define CONTENDED_MIN_NS 25000000
#define CONTENDED_PREEMPTIONS 8
#define CONTENDED_WINDOW_NS 100000000
/* A worker's task is late once it has run twice as long as the caller's tasks took, and this much
   more: a worker sharing its CPU runs at about half speed, which the first part allows for; one
   later still was preempted, for a time slice of milliseconds. Shorter, workers of a step of many
   short tasks were moved back and forth for nothing. */
#define STRAGGLER_MIN_NS 100000
/* A thread looks at how long it waited for a CPU (`note_waits_for_cpu`) at most this often. */
#define LOOK_NS 10000000

typedef void (*drug_task)(void *data, int64_t task);

static struct {
    /* the job: task count in the high half, next task to take in the low half (a worker that
       finds nothing left adds one too many, at most once per job: the low half cannot overflow) */
    _Atomic uint64_t state;
    drug_task fn; /* written by the caller before it publishes the job, read by whoever takes a task */
    void *data;
    _Atomic uint32_t done; /* tasks finished: the futex word a waiting caller sleeps on */
    _Atomic uint32_t seq;  /* counts jobs: the futex word idle workers sleep on */
    _Atomic uint32_t spare_seq; /* counts jobs published while every CPU is busy: spares sleep on it */
    _Atomic uint32_t sleepers, spare_sleepers;
    _Atomic uint32_t caller_sleeps;
    pthread_mutex_t lock; /* held by the caller of the running job */
    int workers; /* threads 1 .. workers; spares are workers + 1 .. workers + spares */
    int spares;
    int cpus[CPU_SETSIZE]; /* the CPUs workers keep to (those the process may use), when pinned */
    int cpu_count;         /* 0: workers are not pinned */
    int usable[CPU_SETSIZE]; /* the CPUs the process may use (every_cpu_busy) */
    int usable_count;
    int64_t worker_spin_ns; /* how long an idle worker watches for the next job before sleeping */
    int64_t caller_spin_ns; /* how long a caller watches for started tasks to finish before sleeping */
    int64_t contended_spin_ns; /* either, for a thread that was preempted lately */
    int64_t short_task_ns;     /* ... unless its last tasks took this long at most: then this long */
    /* per worker (index 1..workers): its thread id, when it started the task it is running (0: none),
       and whether a caller moved it onto its own CPU (`pull_stragglers`) */
    pid_t tids[MAX_WORKERS + 1];
    _Atomic int64_t task_since[MAX_WORKERS + 1];
    _Atomic int displaced[MAX_WORKERS + 1];
    /* counters for diagnostics (written by callers under the lock) */
    uint64_t jobs, tasks, caller_tasks, waits, wait_ns;
    _Atomic uint64_t pulls; /* workers moved onto a waiting caller's CPU */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER};

static _Thread_local int inside_task; /* jobs started from a task run there, on their caller */
static _Thread_local long preemptions = -1; /* this thread's involuntary context switches so far */
static _Thread_local long window_preemptions; /* ... since window_start */
static _Thread_local int64_t window_start;
/* Until when a sign of contention holds, and for how long the last one held (see CONTENDED_MIN_NS). */
struct mark {
    _Atomic int64_t until, hold;
};
static struct mark contended; /* for every thread of the pool */
/* Jobs wake the spares while every CPU this process may use is busy with other work too: for each
   CPU, until when a thread of ours that ran there spent a quarter or more of its runnable time
   waiting for it (`note_waits_for_cpu`). With one busy process beside us, the CPU it does not use
   is the caller's or a worker's alone (the workers move away from the caller), and a spare would
   only take turns with our own threads there. */
static struct mark cpu_busy[CPU_SETSIZE];
static _Thread_local int64_t looked_at = -1, ran_then, waited_then; /* this thread's last look */
/* when the spares were last woken, a worker moved onto the caller's CPU or the caller to another
   CPU: our own threads may have shared one since (note_waits_for_cpu) */
static _Atomic int64_t own_threads_shared_at = INT64_MIN;
static _Thread_local int thread_index; /* 0 on any calling thread, 1.. on the workers */
static _Atomic int caller_cpu = -1; /* the CPU the caller of the latest job ran on */
static _Thread_local int placed_for = -1; /* the caller's CPU this worker last chose its own CPU for */
static _Thread_local int short_tasks;      /* whether this thread's last tasks were short */
static _Thread_local int64_t per_task_ns;  /* how long this thread's last tasks took each */

/* Sleep while *word is value, or until `timeout_ns` has passed (0: no timeout). */
static void futex_wait(_Atomic uint32_t *word, uint32_t value, int64_t timeout_ns) {
    struct timespec timeout = {timeout_ns / 1000000000, timeout_ns % 1000000000};
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, timeout_ns > 0 ? &timeout : NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word, int count) {
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Subnormal floats flushed to zero, as in every compiled step (fpmode.py says why): a worker runs
   nothing but steps' tasks, so it sets the mode once. */
static void flush_subnormals(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_ldmxcsr(__builtin_ia32_stmxcsr() | (1u << 15) | (1u << 6)); /* FTZ, DAZ */
#elif defined(__aarch64__)
    uint64_t fpcr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr | (1ull << 24))); /* FZ */
#endif
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* A sign of contention at `now`: extend the mark by its hold, which a new episode starts at
   CONTENDED_MIN_NS unless it follows the last one's end within CONTENDED_FOR_NS (then twice the last
   hold, up to CONTENDED_FOR_NS). Threads racing here store one of their values: either is fine. */
static void mark(struct mark *m, int64_t now) {
    int64_t until = atomic_load_explicit(&m->until, memory_order_relaxed);
    int64_t hold = atomic_load_explicit(&m->hold, memory_order_relaxed);
    if (now > until) hold = hold && now - until <= CONTENDED_FOR_NS ? 2 * hold : CONTENDED_MIN_NS;
    if (hold > CONTENDED_FOR_NS) hold = CONTENDED_FOR_NS;
    atomic_store_explicit(&m->hold, hold, memory_order_relaxed);
    atomic_store_explicit(&m->until, now + hold, memory_order_relaxed);
}

static int marked(struct mark *m, int64_t now) {
    return now < atomic_load_explicit(&m->until, memory_order_relaxed);
}

/* Mark this thread's CPU busy (`mark`) when the thread spent a quarter or more of its
   runnable time, and a quarter of LOOK_NS at least (a few short waits happen beside our own threads
   too), waiting on a run queue since it last looked (the kernel's schedstat); looks every
   LOOK_NS at most, and a look more than CONTENDED_WINDOW_NS after the last only starts a window
   (what happened before a pause says nothing about now).
   A thread may have waited behind one of our own threads instead: since the spares were woken,
   a worker was moved onto the caller's CPU or the caller moved to a worker's (until the worker
   follows), or when it is a worker on the caller's CPU. Sharing with one of ours explains a wait
   as long as the run time; then only a longer one marks the CPU (twice the run time: another
   process is queued there too). Else the spares, once woken, would keep every CPU marked by the
   waits they cause, beside a single busy process too. */
static void note_waits_for_cpu(void) {
    int64_t now = now_ns();
    if (now - looked_at < LOOK_NS) return;
    char text[96];
    int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return;
    text[n] = 0;
    char *end; /* ns on a CPU, ns waiting on a run queue, time slices */
    int64_t ran = strtoll(text, &end, 10), waited = strtoll(end, NULL, 10);
    int64_t ran_since = ran - ran_then, waited_since = waited - waited_then;
    int fresh = looked_at >= 0 && now - looked_at <= CONTENDED_WINDOW_NS;
    int cpu = sched_getcpu();
    /* a thread woken or moved a little before the last look may still have run beside this one */
    int beside_own = atomic_load_explicit(&own_threads_shared_at, memory_order_relaxed) >= looked_at - LOOK_NS ||
                     (thread_index && cpu == atomic_load_explicit(&caller_cpu, memory_order_relaxed));
    looked_at = now;
    ran_then = ran;
    waited_then = waited;
    int waited_long = beside_own ? waited_since >= 2 * ran_since : 3 * waited_since >= ran_since;
    if (fresh && waited_since >= LOOK_NS / 4 && waited_long && cpu >= 0 && cpu < CPU_SETSIZE)
        mark(&cpu_busy[cpu], now);
}

static int every_cpu_busy(void) {
    int64_t now = now_ns();
    for (int i = 0; i < pool.usable_count; i++)
        if (!marked(&cpu_busy[pool.usable[i]], now)) return 0;
    return pool.usable_count > 0;
}

/* How long this thread may spin: `budget_ns`, or less if a thread was preempted often lately. */
static int64_t spin_budget(int64_t budget_ns) {
    struct rusage usage;
    if (getrusage(RUSAGE_THREAD, &usage) != 0) return budget_ns;
    int64_t now = now_ns();
    if (preemptions < 0) preemptions = usage.ru_nivcsw; /* the first look: what came before does not count */
    if (usage.ru_nivcsw != preemptions) {
        if (now - window_start > CONTENDED_WINDOW_NS) {
            window_start = now;
            window_preemptions = 0;
        }
        window_preemptions += usage.ru_nivcsw - preemptions;
        preemptions = usage.ru_nivcsw;
        if (window_preemptions >= CONTENDED_PREEMPTIONS)
            mark(&contended, now);
    }
    if (!marked(&contended, now)) return budget_ns;
    int64_t contended = short_tasks ? pool.short_task_ns : pool.contended_spin_ns;
    return budget_ns > contended ? contended : budget_ns;
}

/* Spin until *word differs from value or budget_ns has passed; returns whether it changed. */
static int spin_while_equal(_Atomic uint32_t *word, uint32_t value, int64_t budget_ns) {
    if (budget_ns <= 0) return atomic_load(word) != value;
    int64_t deadline = now_ns() + budget_ns;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (atomic_load_explicit(word, memory_order_relaxed) != value) return 1;
            relax();
        }
        if (now_ns() > deadline) return atomic_load(word) != value;
    }
}

/* Take and run tasks of the current job until none is left; returns how many this thread ran. */
static uint64_t take_tasks(void) {
    uint64_t ran = 0;
    int64_t start = now_ns();
    for (;;) {
        uint64_t s = atomic_fetch_add_explicit(&pool.state, 1, memory_order_acquire);
        uint32_t task = (uint32_t)s, tasks = (uint32_t)(s >> 32);
        if (task >= tasks) {
            if (ran) {
                int64_t took = now_ns() - start;
                per_task_ns = took / (int64_t)ran;
                short_tasks = took <= (int64_t)ran * pool.short_task_ns;
            }
            return ran;
        }
        if (thread_index) /* for pull_stragglers */
            atomic_store_explicit(&pool.task_since[thread_index], now_ns(), memory_order_release);
        pool.fn(pool.data, task); /* the job cannot change before this task is counted done */
        if (thread_index) atomic_store_explicit(&pool.task_since[thread_index], 0, memory_order_relaxed);
        ran++;
        if (atomic_fetch_add(&pool.done, 1) + 1 == tasks && atomic_load(&pool.caller_sleeps))
            futex_wake(&pool.done, 1);
    }
}

/* Keep this worker on the index-th CPU other than the caller's: a system call only when the
   caller has moved since this worker last looked. */
static void follow_caller(void) {
    if (atomic_load_explicit(&pool.displaced[thread_index], memory_order_relaxed)) {
        atomic_store(&pool.displaced[thread_index], 0);
        placed_for = -1; /* a caller moved it onto its own CPU: back to one of its own */
        looked_at = -1;  /* what it waited there, beside the caller, says nothing of other processes */
    }
    int caller = atomic_load_explicit(&caller_cpu, memory_order_relaxed);
    /* spares are not pinned: what they are for is running wherever a CPU comes free */
    if (pool.cpu_count == 0 || caller == placed_for || thread_index > pool.workers) return;
    placed_for = caller;
    int target = pool.cpus[thread_index % pool.cpu_count], seen = 0;
    for (int i = 0; i < pool.cpu_count; i++) {
        if (pool.cpus[i] != caller && ++seen == thread_index) {
            target = pool.cpus[i];
            break;
        }
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(target, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static void *worker(void *index) {
    thread_index = (int)(intptr_t)index;
    pool.tids[thread_index] = (pid_t)syscall(SYS_gettid);
    pthread_setname_np(pthread_self(), thread_index > pool.workers ? "drug-spare" : "drug-pool"); /* top, perf */
    inside_task = 1;
    flush_subnormals();
    uint32_t seen = atomic_load(&pool.seq);
    for (;;) {
        follow_caller();
        if (take_tasks()) follow_caller(); /* before it spins: not on the caller's CPU */
        if (pool.spares && thread_index <= pool.workers) note_waits_for_cpu();
        if (thread_index > pool.workers) {
            /* a spare sleeps as soon as it has no task: spinning, it would take turns with our own
               threads on a CPU it shares with them. Missing a job costs nothing: the caller and the
               workers take every task without it. */
            uint32_t spare_seen = atomic_load(&pool.spare_seq);
            atomic_fetch_add(&pool.spare_sleepers, 1);
            futex_wait(&pool.spare_seq, spare_seen, 0);
            atomic_fetch_sub(&pool.spare_sleepers, 1);
        } else if (!spin_while_equal(&pool.seq, seen, spin_budget(pool.worker_spin_ns))) {
            atomic_fetch_add(&pool.sleepers, 1);
            while (atomic_load(&pool.seq) == seen) futex_wait(&pool.seq, seen, 0);
            atomic_fetch_sub(&pool.sleepers, 1);
        }
        seen = atomic_load(&pool.seq);
    }
    return NULL;
}

/* With pinned workers: move each worker whose task has run twice as long as the caller's tasks took
   (`caller_task_ns` each) onto the caller's CPU, which the caller is about to leave idle. Returns
   how long until the next running task becomes late (0: none will). */
static int64_t pull_stragglers(int64_t caller_task_ns) {
    if (pool.cpu_count == 0 || caller_task_ns <= 0) return 0;
    int64_t now = now_ns();
    int cpu = sched_getcpu();
    if (cpu < 0) return 0;
    int64_t late_after = 2 * caller_task_ns + STRAGGLER_MIN_NS, next = 0;
    for (int w = 1; w <= pool.workers; w++) {
        /* acquire: a worker that noted a task has published its thread id before */
        int64_t since = atomic_load_explicit(&pool.task_since[w], memory_order_acquire);
        if (since == 0 || pool.tids[w] <= 0 || atomic_load_explicit(&pool.displaced[w], memory_order_relaxed))
            continue;
        int64_t wait = since + late_after - now;
        if (wait > 0) {
            next = next == 0 || wait < next ? wait : next;
            continue;
        }
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(pool.tids[w], sizeof set, &set) != 0) continue;
        atomic_store(&pool.displaced[w], 1); /* after the move: the worker undoes it when it sees this */
        atomic_fetch_add(&pool.pulls, 1);
        atomic_store_explicit(&own_threads_shared_at, now, memory_order_relaxed);
    }
    return next;
}

static void run_here(drug_task fn, void *data, int64_t tasks) {
    int was = inside_task;
    inside_task = 1;
    for (int64_t i = 0; i < tasks; i++) fn(data, i);
    inside_task = was;
}

/* Run fn(data, i) for i in 0 .. tasks-1 and return when all have finished. */
EXPORT void drug_pool_run(drug_task fn, void *data, int64_t tasks) {
    if (tasks <= 1 || inside_task || pool.workers == 0 || tasks > MAX_TASKS || pthread_mutex_trylock(&pool.lock)) {
        run_here(fn, data, tasks);
        return;
    }
    pool.fn = fn;
    pool.data = data;
    if (pool.cpu_count) {
        int cpu = sched_getcpu();
        if (cpu != atomic_load_explicit(&caller_cpu, memory_order_relaxed)) {
            atomic_store_explicit(&caller_cpu, cpu, memory_order_relaxed);
            /* until the workers move away, one of them may share the caller's new CPU */
            atomic_store_explicit(&own_threads_shared_at, now_ns(), memory_order_relaxed);
        }
    }
    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool.state, (uint64_t)tasks << 32, memory_order_release);
    atomic_fetch_add(&pool.seq, 1);
    if (atomic_load(&pool.sleepers)) futex_wake(&pool.seq, INT_MAX);
    /* the spares, while every CPU is busy, unless the caller's last tasks were short: tasks of
       microseconds are over before a woken spare gets a CPU */
    if (pool.spares) note_waits_for_cpu();
    if (pool.spares && !short_tasks && every_cpu_busy()) {
        atomic_store_explicit(&own_threads_shared_at, now_ns(), memory_order_relaxed);
        atomic_fetch_add(&pool.spare_seq, 1);
        if (atomic_load(&pool.spare_sleepers)) futex_wake(&pool.spare_seq, INT_MAX);
    }
    inside_task = 1;
    uint64_t mine = take_tasks();
    inside_task = 0;
    uint32_t done = atomic_load(&pool.done);
    if (done != (uint32_t)tasks) { /* tasks started by workers are still running */
        int64_t start = now_ns(), budget = spin_budget(pool.caller_spin_ns);
        while (done != (uint32_t)tasks) {
            if (!spin_while_equal(&pool.done, done, budget)) {
                int64_t recheck = pull_stragglers(mine ? per_task_ns : 0);
                atomic_store(&pool.caller_sleeps, 1);
                done = atomic_load(&pool.done);
                if (done != (uint32_t)tasks) futex_wait(&pool.done, done, recheck);
                atomic_store(&pool.caller_sleeps, 0);
            }
            done = atomic_load(&pool.done);
        }
        pool.waits++;
        pool.wait_ns += (uint64_t)(now_ns() - start);
    }
    pool.jobs++;
    pool.tasks += (uint64_t)tasks;
    pool.caller_tasks += mine;
    pthread_mutex_unlock(&pool.lock);
}

/* Start the workers (threads - 1 of them) and the spares; returns how many workers started. Call
   once. `pin`: workers keep to CPUs of their own (follow_caller) if the threads are as many as the
   CPUs this process may use (with fewer, pinning would leave CPUs idle that another process's pool
   may want). */
EXPORT int drug_pool_start(int threads, int spares, int64_t worker_spin_ns, int64_t caller_spin_ns,
                           int64_t contended_spin_ns, int64_t short_task_ns, int pin) {
    pool.worker_spin_ns = worker_spin_ns;
    pool.caller_spin_ns = caller_spin_ns;
    pool.contended_spin_ns = contended_spin_ns;
    pool.short_task_ns = short_task_ns;
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0) {
        for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
            if (CPU_ISSET(cpu, &allowed)) pool.usable[pool.usable_count++] = cpu;
        if (pin && pool.usable_count == threads) {
            pool.cpu_count = pool.usable_count;
            for (int i = 0; i < pool.usable_count; i++) pool.cpus[i] = pool.usable[i];
        }
    }
    int wanted = threads - 1 > MAX_WORKERS ? MAX_WORKERS : threads - 1;
    int spares_wanted = spares < 0 ? 0 : spares > MAX_WORKERS - wanted ? MAX_WORKERS - wanted : spares;
    pool.workers = wanted; /* before any thread starts: a spare knows itself by its index */
    pool.spares = spares_wanted;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int started = 0;
    for (; started < wanted + spares_wanted; started++) {
        pthread_t thread;
        if (pthread_create(&thread, &attr, worker, (void *)(intptr_t)(started + 1))) break;
    }
    pthread_attr_destroy(&attr);
    pool.workers = started < wanted ? started : wanted;
    pool.spares = started - pool.workers;
    return pool.workers;
}

EXPORT int drug_pool_threads(void) { return pool.workers + 1; }

/* How many threads may run tasks of one job at once, the spares included: the scratch memory
   tasks pick by `drug_pool_thread` holds this many parts. */
EXPORT int drug_pool_thread_slots(void) { return pool.workers + pool.spares + 1; }

/* Which thread runs the current task: 0 for a thread that calls drug_pool_run (whichever it is),
   1 .. thread_slots-1 for the workers and spares. Tasks use it to pick their own scratch memory:
   two threads never run tasks of one job under the same index. */
EXPORT int64_t drug_pool_thread(void) { return thread_index; }

#ifndef DRUG_POOL_SOURCE
#define DRUG_POOL_SOURCE "unknown"
#endif
/* The SHA-256 of the source this library was built from (the build passes it in). */
EXPORT const char *drug_pool_source(void) { return DRUG_POOL_SOURCE; }

/* Counters since the start: jobs, tasks, tasks the callers ran, waits for started tasks, ns waited,
   workers moved onto a waiting caller's CPU. */
EXPORT void drug_pool_stats(uint64_t *out) {
    pthread_mutex_lock(&pool.lock);
    out[0] = pool.jobs;
    out[1] = pool.tasks;
    out[2] = pool.caller_tasks;
    out[3] = pool.waits;
    out[4] = pool.wait_ns;
    out[5] = atomic_load(&pool.pulls);
    pthread_mutex_unlock(&pool.lock);
}
