/*
 * x86-64 System V context switch.
 *
 *   void ca__ctx_switch(void **save_sp, void *new_sp);
 *
 * Saves what the ABI makes callee-saved (rbx, rbp, r12-r15, the MXCSR control
 * bits and the x87 control word) on the current stack, stores the stack
 * pointer in *save_sp, loads new_sp and restores the same frame from there.
 * Nothing else: no signal mask, no syscall.
 *
 * A new context is a stack whose frame (built by ca__ctx_make) "returns" into
 * ca__ctx_entry with r12 = function and r13 = argument.
 */
    .text
    .globl  ca__ctx_switch
    .hidden ca__ctx_switch
    .type   ca__ctx_switch, @function
    .p2align 4
ca__ctx_switch:
    .cfi_startproc
    pushq   %rbp
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %rbp, 0
    pushq   %rbx
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %rbx, 0
    pushq   %r12
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r12, 0
    pushq   %r13
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r13, 0
    pushq   %r14
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r14, 0
    pushq   %r15
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r15, 0
    subq    $8, %rsp
    .cfi_adjust_cfa_offset 8
    stmxcsr (%rsp)
    fnstcw  4(%rsp)
    movq    %rsp, (%rdi)
    /* The x87 control word is compared and loaded only when it differs
     * (fldcw is slow and tasks almost never change it).  MXCSR is loaded
     * unconditionally: reading back what stmxcsr just stored, to compare,
     * costs more than ldmxcsr itself (about 2 ns a switch on AMD Zen). */
    movq    %rsp, %rax
    /* From here on we run on the target stack, whose frame has the same
     * layout, so the CFI above still describes it. */
    movq    %rsi, %rsp
    ldmxcsr (%rsp)
    movzwl  4(%rsp), %edx
    addq    $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq    %r15
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r15
    popq    %r14
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r14
    popq    %r13
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r13
    popq    %r12
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r12
    popq    %rbx
    .cfi_adjust_cfa_offset -8
    .cfi_restore %rbx
    popq    %rbp
    .cfi_adjust_cfa_offset -8
    .cfi_restore %rbp
    /* The suspended side's frame stays intact: nothing runs on it. */
    cmpw    4(%rax), %dx
    jne     2f
    ret
2:
    /* fldcw through the red zone below the return address, which signal
     * delivery leaves alone. */
    movw    %dx, -16(%rsp)
    fldcw   -16(%rsp)
    ret
    .cfi_endproc
    .size   ca__ctx_switch, .-ca__ctx_switch

/* First frame of every task: call fn(arg), which never returns.  The
 * undefined return address tells debuggers this is the outermost frame. */
    .globl  ca__ctx_entry
    .hidden ca__ctx_entry
    .type   ca__ctx_entry, @function
    .p2align 4
ca__ctx_entry:
    .cfi_startproc
    .cfi_undefined %rip
    /* The first frame's return address points past this nop, inside the
     * CFI range, so a backtrace taken mid-switch still ends cleanly. */
    nop
    .globl  ca__ctx_entry_start
    .hidden ca__ctx_entry_start
ca__ctx_entry_start:
    movq    %r13, %rdi
    callq   *%r12
    ud2
    .cfi_endproc
    .size   ca__ctx_entry, .-ca__ctx_entry

    .section .note.GNU-stack,"",@progbits
