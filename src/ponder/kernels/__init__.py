"""Fast paths the methods use: the tanh RNN loops of ACT and PonderNet with their backward
written out (``act_rnn``, ``pondernet_rnn``) and a faster CPU tanh (``tanh``). They import
nothing of ponder's but each other."""
